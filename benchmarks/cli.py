"""``scnn-bench``: one command with a subcommand per tool, each taking a results folder the same way (a
positional argument). ``python run_all.py`` and each tool's ``python -m`` form stay and are the same code.

    scnn-bench run --preset smoke                      # = python run_all.py ...
    scnn-bench figures results/cpu                     # tables and figures from stored runs
    scnn-bench scale results/cpu results/scale         # the scale study's answer
    scnn-bench headline results/cpu results/scale      # every method on the largest network measured
    scnn-bench speed results/cpu                       # measured inference speed
    scnn-bench inspect results/cpu/runs/<id>/model.packed
    scnn-bench compare results/cpu repro/cpu
    scnn-bench describe self_compression               # a method's parameters and grids (no name: list them)
    scnn-bench migrate results/cpu                     # stored runs brought to the current result schema
"""
from __future__ import annotations

import importlib
import sys

from benchmarks import argparsing

#: subcommand -> (module whose ``main(argv)`` runs it, one line of help)
COMMANDS = {
    "run": ("benchmarks.run", "train every method over its grid and write tables and figures (= run_all.py)"),
    "figures": ("benchmarks.report.figures", "rebuild results.csv, tables.md and figures from stored runs"),
    "scale": ("benchmarks.report.scale", "self-compression against network size: the paper's headline"),
    "headline": ("benchmarks.report.headline", "every method on the largest network measured: the README's table"),
    "speed": ("benchmarks.timing.speed", "measured inference speed and MACs of every finished run"),
    "step-speed": ("benchmarks.timing.step_speed", "training-step cost of each method against float"),
    "export": ("benchmarks.export", "every finished run as an ONNX model, 8-bit where codes fit, checked in onnxruntime"),
    "inspect": ("benchmarks.accounting.inspect", "size report of one packed model file, from the file alone"),
    "compare": ("benchmarks.report.compare", "a reproduction against stored reference runs, run by run"),
    "describe": (None, "a method's parameters, defaults and grids; without a name, every method"),
    "migrate": ("benchmarks.harness.migrate", "bring stored runs to the current result schema"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: scnn-bench COMMAND [ARGS] (scnn-bench COMMAND --help for its own)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv:
        print(f"error: name a command: {', '.join(COMMANDS)} (see scnn-bench --help)", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if name == "describe":  # run_all's --describe / --list-methods --verbose
        from benchmarks.run import main as run
        if rest and rest[0] in ("-h", "--help"):
            print("usage: scnn-bench describe [METHOD]\n\n" + COMMANDS[name][1])
            return 0
        if len(rest) > 1 or (rest and rest[0].startswith("-")):
            print(f"error: scnn-bench describe takes one method name or none, got {' '.join(rest)} (see scnn-bench "
                  f"describe --help)", file=sys.stderr)
            return 2
        return run(["--describe", rest[0]] if rest else ["--list-methods", "--verbose"], prog="scnn-bench describe")
    module = importlib.import_module(COMMANDS[name][0])
    argparsing.invoked_as = f"scnn-bench {name}"  # usage and errors name the command as the user typed it
    try:
        return module.main(rest)
    finally:
        argparsing.invoked_as = None


if __name__ == "__main__":
    sys.exit(main())
