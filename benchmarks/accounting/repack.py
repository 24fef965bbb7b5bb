"""``python -m benchmarks.accounting.repack OUT [--into COPY]``: rewrite the stored runs' ``model.packed`` in the current
packed format and refresh the size in their ``result.json`` from the rewritten file.

Runs written before format v2 have only fixed-length sizes. Their models need no retraining to be measured
in v2: the writer reads the stored file, writes the same codes in the current format (each layer in the
shorter of fixed-length and entropy coding), reads that file back, and checks that it decodes to exactly the
same network, weight for weight, before it replaces anything. Accuracy is left as it was (the decoded network
is the same), the old file's size report is kept under ``size_before_repack``, and the rebuilt tables and
figures then show both sizes. ``--into`` works on a copy of the runs and leaves ``OUT`` as it was (the
committed reference runs stay in the format they were written in, which the tests read).
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import torch

from benchmarks.accounting import packing
from benchmarks.accounting.size import size_report
from benchmarks.argparsing import Parser
from benchmarks.compressed import to_module
from benchmarks.files import replacing, write_json
from benchmarks.harness.rundir import finished, held, missing_runs, packed_digest
from benchmarks.report.figures import build_all


def repack(folder: Path) -> bool:
    """Rewrite one finished run's packed file in the current format; False when it already is."""
    path = folder / "model.packed"
    old, stored = packing.read_file(path)
    if stored.version == packing.VERSION:
        return False
    data = packing.to_bytes(old)
    new, layout = packing.read(data, str(path))
    a, b = to_module(old).state_dict(), to_module(new).state_dict()
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        raise packing.PackedFileError(f"{path}: the rewritten file does not decode to the same network; left it")
    result = finished(folder)
    result["size_before_repack"] = result["size"]
    result["size"] = size_report(new, layout).as_dict()
    result["packed_sha256"] = packed_digest(data)
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    write_json(folder / "result.json", result)
    return True


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.accounting.repack", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="results folder holding runs/ (e.g. results/cpu)")
    p.add_argument("--into", type=Path, help="copy the finished runs there first and rewrite the copy instead")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (error := missing_runs(args.out)) is not None:
        print(error, file=sys.stderr)
        return 2
    done = skipped = 0
    try:
        if args.into is not None:
            for folder in sorted(d for d in (args.out / "runs").iterdir() if finished(d) is not None):
                shutil.copytree(folder, args.into / "runs" / folder.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".lock", "checkpoint.pt", "*.tmp"))
            args.out = args.into
        for folder in sorted(d for d in (args.out / "runs").iterdir() if d.is_dir()):
            if finished(folder) is None:
                continue
            with held(folder, wait=True):
                if repack(folder):
                    done += 1
                else:
                    skipped += 1
        build_all(args.out)
    except (OSError, packing.PackedFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{done} runs rewritten in packed format v{packing.VERSION}, {skipped} already were; tables and figures "
          f"rebuilt in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
