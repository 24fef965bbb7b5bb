"""Reading and writing run folders so that no torn, foreign or half-written file can break a grid or a report.

A run folder ``<out>/runs/<id>/`` is trusted only as far as it checks out: ``read_result`` accepts a
``result.json`` only when it parses, has the fields the reports read, names its own folder and (when ``ok``)
comes with a ``model.packed`` and a ``history.jsonl`` that parses; anything else is named in one warning
line and the run counts as not done, so the grid redoes it. Writers replace files atomically, and a
per-run lock (``run_lock``) keeps two grids on one output folder from training the same run twice: the
lock is an OS file lock, released by the kernel when its holder dies, even by ``kill -9``.

No training code is imported here: the reports and figures read run folders through this module too.
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

log = logging.getLogger(__name__)

#: size fields every finished run's ``result.json`` must carry (the tables and figures read them)
SIZE_FIELDS = ("bits", "bits_remaining_pct", "weights_remaining_pct", "weights_total", "weights_remaining")


class RunFileError(ValueError):
    """A run file that does not parse or does not hold what a run folder must."""


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A private temporary path to write, moved onto ``path`` on success: a reader (or a second grid
    writing the same report) sees the old file or the new one, never a torn one. The temporary name keeps
    the process id, so two writers never share one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (see ``replacing``)."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


def run_lock(folder: Path) -> FileLock:
    """The lock that whoever trains or clears this run holds (a file ``.lock`` inside the folder)."""
    return FileLock(folder / ".lock")


def read_history(path: Path, strict: bool = False, limit: int | None = None) -> list[dict]:
    """The per-epoch records of ``history.jsonl`` (the first ``limit`` of them, when given: lines after
    those are not read). A line that does not parse as a JSON object raises ``RunFileError`` when
    ``strict``; otherwise it is skipped with one warning naming the file and line."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        if strict:
            raise RunFileError(f"{path.name} is unreadable ({e})") from None
        log.warning("%s is unreadable (%s); no history shown for this run", path, e)
        return []
    for i, line in enumerate(lines, 1):
        if limit is not None and len(records) == limit:
            break
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if strict:
                raise RunFileError(f"{path.name}, line {i}, does not parse ({e})") from None
            log.warning("%s, line %d, does not parse (%s); skipped it", path, i, e)
            continue
        records.append(rec)
    return records


def check_result(r: Any, folder: Path) -> dict:
    """``r`` (a parsed ``result.json``) if it is a complete record of the run in ``folder``, else
    ``RunFileError`` saying what is wrong."""
    if not isinstance(r, dict):
        raise RunFileError(f"holds a JSON {type(r).__name__}, not an object")
    if r.get("status") not in ("ok", "failed"):
        raise RunFileError(f"has status {r.get('status')!r}, not 'ok' or 'failed'")
    if r.get("run_id") != folder.name:
        raise RunFileError(f"names run {r.get('run_id')!r}, not its folder's {folder.name!r}")
    spec = r.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("method"), str) or not isinstance(spec.get("params"), dict):
        raise RunFileError("has no usable 'spec' (method and params)")
    if r["status"] == "failed":
        return r
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
            if not (folder / "model.packed").is_file():
                raise RunFileError("result.json says ok but model.packed is missing")
            read_history(folder / "history.jsonl", strict=True)
    except RunFileError as e:
        if warn:
            log.warning("run %s: %s; it counts as not done and the next grid redoes it", folder.name, e)
        return None
    return r


def finished(folder: Path) -> dict | None:
    """The result of a run that finished well (status ``ok``, every file in order), else None."""
    r = read_result(folder)
    return r if r is not None and r["status"] == "ok" else None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
