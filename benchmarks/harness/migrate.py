"""``python -m benchmarks.harness.migrate OUT [OUT ...]``: bring every stored run's ``result.json`` to the
current result schema (``rundir.RESULT_SCHEMA``), in place, without training anything.

One step per schema, applied in order, so that the readers only ever see the current layout:

- to 2: record ``schema`` and ``packed_sha256``, the checksum a finished run's ``model.packed`` is checked
  against before the run counts as finished. A file is given its checksum only after it passes the packed
  reader's checks; a run whose file does not is named in one line and left as it is (the next grid redoes it).
- to 3: the size report of a run written in packed format v1 gets the names the current reports read: its
  value entropies become ``value_entropy_per_weight`` and ``value_entropy_per_weight_nonzero`` (same
  definition), and its ``entropy_bits``, which pooled the codes of every bit depth and so is not the current
  ``code_entropy_bits``, is kept as ``pooled_code_entropy_bits``. Nothing is dropped and no number changes.
- to 4: the same ``entropy_bits`` → ``pooled_code_entropy_bits`` in the per-layer rows of those reports (step 3
  renamed only the totals), so that each quantity has one name wherever it is stored.

Running it again changes nothing. Like ``repack`` and ``calibrate_runs``, it takes each run's lock, so a grid
training in the same folder is never raced; ``run_all.py`` migrates its output folder before it plans a grid.
A record is written only once it passes the readers' checks (``rundir.check_result``); one that cannot is
named in one line and left as it is, and counts as not done, like any result that does not check out.
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.accounting.packing import PackedFileError, verify
from benchmarks.argparsing import Parser
from benchmarks.files import RunFileError, write_json
from benchmarks.harness.rundir import RESULT_SCHEMA, check_result, held, missing_runs, packed_digest

log = logging.getLogger(__name__)


class MigrationError(Exception):
    """A stored run that cannot be brought to the next schema; the message says why."""


def _to_2(folder: Path, r: dict) -> None:
    if r.get("status") == "ok":
        try:
            data = (folder / "model.packed").read_bytes()
            verify(data, "model.packed")
        except (OSError, PackedFileError) as e:
            raise MigrationError(f"model.packed fails the reader's checks ({e})") from None
        r["packed_sha256"] = packed_digest(data)


V1_SIZE_NAMES = {"entropy_per_weight": "value_entropy_per_weight",
                 "entropy_per_weight_nonzero": "value_entropy_per_weight_nonzero",
                 "entropy_bits": "pooled_code_entropy_bits"}
V1_LAYER_NAMES = {"entropy_bits": "pooled_code_entropy_bits"}  # a v1 size report's per-layer rows


def _to_3(folder: Path, r: dict) -> None:
    for key in ("size", "size_before_repack"):
        size = r.get(key)
        if isinstance(size, dict):
            r[key] = {V1_SIZE_NAMES.get(k, k): v for k, v in size.items()}


def _to_4(folder: Path, r: dict) -> None:
    for key in ("size", "size_before_repack"):
        size = r.get(key)
        if isinstance(size, dict) and isinstance(size.get("layers"), list):
            size["layers"] = [{V1_LAYER_NAMES.get(k, k): v for k, v in row.items()} if isinstance(row, dict) else row
                              for row in size["layers"]]


#: schema n -> the step that brings a result from n to n + 1 (a result without ``schema`` is at 1)
STEPS: dict[int, Callable[[Path, dict], None]] = {1: _to_2, 2: _to_3, 3: _to_4}


def migrate_run(folder: Path) -> str:
    """Bring one run folder's result to the current schema; returns what happened: "migrated", "current",
    "busy", "no result" or the reason it was left alone."""
    f = folder / "result.json"
    if not f.is_file():
        return "no result"
    with held(folder) as mine:
        if not mine:
            return "busy"
        try:
            r = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return f"result.json does not parse ({type(e).__name__})"
        if not isinstance(r, dict):
            return "result.json is not an object"
        schema = r.get("schema", 1)
        if schema == RESULT_SCHEMA:
            return "current"
        if schema not in STEPS:
            return f"result schema {schema!r} is not one this code knows (1 to {RESULT_SCHEMA})"
        try:
            for step in range(schema, RESULT_SCHEMA):
                STEPS[step](folder, r)
            r["schema"] = RESULT_SCHEMA
            check_result(r, folder)  # what the readers will ask of it, before anything is written
        except (MigrationError, RunFileError) as e:
            return f"result.json {e}" if isinstance(e, RunFileError) else str(e)
        write_json(f, r)
        return "migrated"


def migrate_folder(out: Path) -> dict[str, int]:
    """``migrate_run`` on every run of ``out``; counts of what happened (a run left alone named in a warning)."""
    counts: dict[str, int] = {}
    for folder in sorted(d for d in (out / "runs").iterdir() if d.is_dir()) if (out / "runs").is_dir() else []:
        what = migrate_run(folder)
        if what not in ("migrated", "current", "no result", "busy"):  # busy: a grid holds it, and migrates it
            log.warning("run %s left as it is: %s", folder.name, what)
            what = "left as it is"
        counts[what] = counts.get(what, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.harness.migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="+", type=Path, help="results folders holding runs/ (e.g. results/cpu)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (error := missing_runs(*args.out)) is not None:
        print(error, file=sys.stderr)
        return 2
    for out in args.out:
        counts = migrate_folder(out)
        log.info("%s: %s", out, ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
