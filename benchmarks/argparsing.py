"""The argument parser every command of the project uses: argparse, held to the project's rule for bad
input (one line naming the problem and where to look, exit status 2) and naming the command as the user
typed it, whether ``python -m benchmarks.<tool>``, ``python run_all.py`` or ``scnn-bench <tool>``."""
from __future__ import annotations

import argparse
from typing import Any, NoReturn

#: set by ``scnn-bench`` (``benchmarks.cli``) before it hands a subcommand its arguments: the name a parser
#: shows in its usage and errors instead of the module's own ``python -m`` form
invoked_as: str | None = None


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (argparse prints its whole usage block first)."""

    def __init__(self, *args: Any, prog: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, prog=invoked_as or prog, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
