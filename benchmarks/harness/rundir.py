"""Reading and writing run folders so that no torn, foreign or half-written file can break a grid or a report.

A run folder ``<out>/runs/<id>/`` is trusted only as far as it checks out: ``read_result`` accepts a
``result.json`` only when it parses, has the fields the reports read, names its own folder and (when ``ok``)
comes with a ``model.packed`` whose bytes are the ones the result recorded (``packed_sha256``) and pass the
packed reader's checks, and a ``history.jsonl`` that parses; anything else is named in one warning line and
the run counts as not done, so the grid redoes it. Writers replace files atomically, and a per-run lock
(``run_lock``) keeps two grids on one output folder from training the same run twice: the lock is an OS
file lock, released by the kernel when its holder dies, even by ``kill -9``.

A finished run is trained again only on request (``request_rerun``, from ``run_all.py --rerun``), and then
into ``<id>/rerun/``: the old result stays in place until the new one is complete, and only then are its
files moved over the old ones (``roll_forward``, which also completes a move that an interruption cut short).

No training code is imported here: the reports and figures read run folders through this module too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from benchmarks.accounting.packing import PackedFileError, verify
from benchmarks.files import RunFileError, read_history

log = logging.getLogger(__name__)

#: size fields every finished run's ``result.json`` must carry (the tables and figures read them)
SIZE_FIELDS = ("bits", "bits_remaining_pct", "weights_remaining_pct", "weights_total", "weights_remaining")
#: spec fields the reports read beside method and params
SPEC_FIELDS = ("seed", "dataset", "data_fingerprint", "model", "train")
#: the version of ``result.json``'s layout that this code writes and reads (``benchmarks.harness.migrate``
#: brings older results to it): 2 added ``schema`` and ``packed_sha256``; 3 gave packed-format-v1 size reports
#: the current names in their totals, 4 in their per-layer rows
RESULT_SCHEMA = 4
RUN_FILES = ("config.json", "history.jsonl", "model.packed", "result.json")  # result.json last: it says "done"
STAGING = "rerun"  # a requested rerun trains here, beside the result it will replace
RERUN_REQUEST = "rerun-requested"
COMPLETE = "complete"  # written into STAGING once its result is whole: from then on it replaces the old one


def missing_runs(*outs: str | os.PathLike) -> str | None:
    """The one-line error every command-line tool gives for the first of ``outs`` that is not a results
    folder holding a run with a result (finished or failed), else None: a tool that reads stored runs has
    nothing to do without one, and says so rather than writing an empty report."""
    for out in outs:
        runs = Path(out) / "runs"
        if not runs.is_dir() or not any(runs.glob("*/result.json")):
            return (f"error: no runs in {runs}{'' if not runs.is_dir() else ' with a result yet'}; pass a results "
                    f"folder that run_all.py wrote (e.g. results/cpu)")
    return None


def run_lock(folder: Path) -> FileLock:
    """The lock that whoever trains or clears this run holds (a file ``.lock`` inside the folder)."""
    return FileLock(folder / ".lock")


@contextmanager
def held(folder: Path, wait: bool = False) -> Iterator[bool]:
    """Hold the run's lock for the ``with`` block and yield True; without ``wait``, yield False at once (holding
    nothing) when another process holds it, so that the caller skips the run instead of queueing behind it."""
    lock = run_lock(folder)
    try:
        lock.acquire(timeout=-1 if wait else 0)
        mine = True
    except Timeout:
        mine = False
    if not mine:  # yielded outside the except: an error in the caller's block is not chained to the Timeout
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def check_result(r: Any, folder: Path) -> dict:
    """``r`` (a parsed ``result.json``) if it is a complete record of the run in ``folder``, else
    ``RunFileError`` saying what is wrong."""
    if not isinstance(r, dict):
        raise RunFileError(f"holds a JSON {type(r).__name__}, not an object")
    if r.get("schema", 1) != RESULT_SCHEMA:
        raise RunFileError(f"is at result schema {r.get('schema', 1)!r}, not {RESULT_SCHEMA}; bring it up to date "
                           f"with python -m benchmarks.harness.migrate {folder.parent.parent}")
    if r.get("status") not in ("ok", "failed"):
        raise RunFileError(f"has status {r.get('status')!r}, not 'ok' or 'failed'")
    if r.get("run_id") != folder.name:
        raise RunFileError(f"names run {r.get('run_id')!r}, not its folder's {folder.name!r}")
    spec = r.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("method"), str) or not isinstance(spec.get("params"), dict):
        raise RunFileError("has no usable 'spec' (method and params)")
    model, train = spec.get("model"), spec.get("train")
    if not (all(k in spec for k in SPEC_FIELDS) and isinstance(model, dict) and {"name", "width"} <= model.keys()
            and isinstance(train, dict) and {"epochs", "precision"} <= train.keys()):
        raise RunFileError(f"has an incomplete 'spec' ({', '.join(SPEC_FIELDS)}, model name and width, train "
                           "epochs and precision)")
    if r["status"] == "failed":
        return r
    if not isinstance(r.get("budget"), dict) or not _number(r["budget"].get("method_epochs")):
        raise RunFileError("has no 'budget' record with its method_epochs")
    acc = r.get("accuracy")
    if not _number(acc) or not 0 <= acc <= 100:
        raise RunFileError(f"has accuracy {acc!r}, not a number in [0, 100]")
    size = r.get("size")
    if not isinstance(size, dict) or not all(_number(size.get(k)) for k in SIZE_FIELDS):
        raise RunFileError(f"has no complete 'size' record ({', '.join(SIZE_FIELDS)})")
    return r


def read_result(folder: Path, deep: bool = True, warn: bool = True) -> dict | None:
    """The run's checked ``result.json``; None when the run has none or it does not check out (then one
    warning line names the run and says it will be redone). With ``deep``, a finished run also needs its
    ``model.packed`` and a ``history.jsonl`` that parses. ``warn=False`` only looks (a count, say), so that
    the one warning comes from whoever redoes the run."""
    f = folder / "result.json"
    if not f.is_file():
        return None
    try:
        try:
            r = check_result(json.loads(f.read_text()), folder)
        except (OSError, UnicodeDecodeError, ValueError) as e:  # RunFileError and JSONDecodeError are ValueErrors
            raise RunFileError(f"result.json {e}" if isinstance(e, RunFileError) else
                               f"result.json does not parse ({type(e).__name__}: {e})") from None
        if deep and r["status"] == "ok":
            check_packed(folder, r)
            read_history(folder / "history.jsonl", strict=True)
    except RunFileError as e:
        if warn:
            log.warning("run %s: %s; it counts as not done and the next grid redoes it", folder.name, e)
        return None
    return r


def packed_digest(data: bytes) -> str:
    """The SHA-256 (hex) of a packed file's bytes, as ``result.json``'s ``packed_sha256`` records it."""
    return hashlib.sha256(data).hexdigest()


def check_packed(folder: Path, r: dict) -> None:
    """``RunFileError`` unless the run's ``model.packed`` is the file its result recorded and passes the
    reader's checks (header, streams, its own checksum)."""
    path = folder / "model.packed"
    if not path.is_file():
        raise RunFileError("result.json says ok but model.packed is missing")
    recorded = r.get("packed_sha256")
    if not isinstance(recorded, str):
        raise RunFileError("result.json records no packed_sha256")
    data = path.read_bytes()
    if packed_digest(data) != recorded:
        raise RunFileError("model.packed is not the file its result.json recorded (altered or replaced)")
    try:
        verify(data, "model.packed")
    except PackedFileError as e:
        raise RunFileError(f"model.packed fails the reader's checks ({e})") from None


def finished(folder: Path) -> dict | None:
    """The result of a run that finished well (status ``ok``, every file in order) and is not asked to be
    trained again (``request_rerun``), else None."""
    if (folder / RERUN_REQUEST).exists():
        return None
    r = read_result(folder)
    return r if r is not None and r["status"] == "ok" else None


def request_rerun(folder: Path) -> bool:
    """Mark a finished run to be trained again (``run_all.py --rerun``) without touching its result: the next
    ``execute`` trains it into ``STAGING`` and moves it in once complete. False when another process holds
    the run; a run that is not finished needs no request (it is trained anyway)."""
    if not folder.is_dir():
        return True
    with held(folder) as mine:
        if not mine:  # another grid trains it
            return False
        if read_result(folder, warn=False) is not None:
            (folder / RERUN_REQUEST).touch()
    return True


def staging(folder: Path) -> Path:
    """Where a requested rerun of the run in ``folder`` trains (created), its partial files kept across
    interruptions so that the rerun resumes."""
    (folder / STAGING).mkdir(exist_ok=True)
    return folder / STAGING


def complete_rerun(folder: Path) -> None:
    """The rerun in ``STAGING`` has its whole result: mark it complete, then move it over the old one."""
    (folder / STAGING / COMPLETE).touch()
    roll_forward(folder)


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files (``files.replacing``'s ``*.tmp``) that a writer killed mid-write left in the
    run folder, a width-1.0 checkpoint's among them: only the holder of the run's lock writes there, so under
    the lock every one found is stale. Call it holding the run's lock."""
    for tmp in folder.rglob("*.tmp"):
        tmp.unlink(missing_ok=True)


def roll_forward(folder: Path) -> None:
    """Finish moving a complete rerun's files over the old ones (idempotent: an interrupted move is taken up
    where it stopped), then drop the staging folder and the request. Call it holding the run's lock."""
    stage = folder / STAGING
    if not (stage / COMPLETE).exists():
        return
    for name in RUN_FILES:
        if (stage / name).exists():
            os.replace(stage / name, folder / name)
    (folder / "model.onnx").unlink(missing_ok=True)  # exported from the old model.packed (benchmarks.export)
    (folder / RERUN_REQUEST).unlink(missing_ok=True)
    shutil.rmtree(stage, ignore_errors=True)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
