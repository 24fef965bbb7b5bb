"""``python -m benchmarks.accounting.inspect FILE``: the size report of a packed model file, measured from the file alone.

Anyone can check a published number this way: the report is computed by the same accounting the harness
uses, from the bytes on disk, without the method that produced the file: fixed-length ``bits``, the
``coded_bits`` the file really takes, and per layer its coding. An invalid file is one line, exit status 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.accounting import packing
from benchmarks.accounting.size import size_report
from benchmarks.argparsing import Parser


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.accounting.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="a model.packed file (e.g. results/cpu/runs/<id>/model.packed)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = p.parse_args(argv)
    try:
        cm, layout = packing.read_file(args.file)
    except OSError as e:
        print(f"error: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    except packing.PackedFileError as e:  # one line, naming the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = size_report(cm, layout)
    if args.json:
        print(json.dumps({"file": str(args.file), "arch": cm.arch.as_dict(), **report.as_dict()}, indent=1))
    else:
        print(f"{args.file}: {cm.arch.name} x{cm.arch.width:g}, {len(cm.layers)} layers, format version "
              f"{layout.version}, {layout.file_bytes} bytes ({layout.header_bytes} of them prelude and header)")
        print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
