#!/usr/bin/env python
"""Train every registered method over its parameter grid and write tables and figures: ``python run_all.py
--help``, the same as ``scnn-bench run --help`` (``benchmarks.run``)."""
import sys

from benchmarks.run import main

if __name__ == "__main__":
    sys.exit(main())
