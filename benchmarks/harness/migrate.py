"""``python -m benchmarks.harness.migrate OUT [OUT ...]``: bring every stored run's ``result.json`` to the
current result schema (``rundir.RESULT_SCHEMA``), in place, without training anything.

Schema 2 records ``schema`` and ``packed_sha256``, the checksum a finished run's ``model.packed`` is checked
against before the run counts as finished. A file is given its checksum only after it passes the packed
reader's checks; a run whose file does not is named in one line and left as it is (the next grid redoes it).
Running it again changes nothing. Like ``repack`` and ``calibrate_runs``, it takes each run's lock, so a
grid training in the same folder is never raced.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from filelock import Timeout

from benchmarks.accounting.packing import PackedFileError, read as read_packed
from benchmarks.files import write_json
from benchmarks.harness.rundir import RESULT_SCHEMA, packed_digest, run_lock

log = logging.getLogger(__name__)


def migrate_run(folder: Path) -> str:
    """Bring one run folder's result to the current schema; returns what happened: "migrated", "current",
    "busy", "no result" or the reason it was left alone."""
    f = folder / "result.json"
    if not f.is_file():
        return "no result"
    lock = run_lock(folder)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return "busy"
    try:
        try:
            r = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return f"result.json does not parse ({type(e).__name__})"
        if not isinstance(r, dict):
            return "result.json is not an object"
        if r.get("schema") == RESULT_SCHEMA:
            return "current"
        if r.get("status") == "ok":
            try:
                data = (folder / "model.packed").read_bytes()
                read_packed(data, "model.packed")
            except (OSError, PackedFileError) as e:
                return f"model.packed fails the reader's checks ({e})"
            r["packed_sha256"] = packed_digest(data)
        r["schema"] = RESULT_SCHEMA
        write_json(f, r)
        return "migrated"
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness.migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="+", type=Path, help="results folders holding runs/ (e.g. results/cpu)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for out in args.out:
        if not (out / "runs").is_dir():
            print(f"error: no runs in {out}/runs; pass results folders written by run_all.py", file=sys.stderr)
            return 2
    for out in args.out:
        counts: dict[str, int] = {}
        for folder in sorted(d for d in (out / "runs").iterdir() if d.is_dir()):
            what = migrate_run(folder)
            if what not in ("migrated", "current", "no result"):
                log.warning("run %s left as it is: %s", folder.name, what)
                what = "left as it is"
            counts[what] = counts.get(what, 0) + 1
        log.info("%s: %s", out, ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
