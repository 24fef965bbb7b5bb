"""Running a grid on a cluster engine (Ray, or SLURM through submitit) into the same run folders.

The engine only schedules: every run is ``benchmarks.harness.runner.execute`` on a worker, so a run folder is the
same whichever executor wrote it, finished runs are skipped, and tables are rebuilt from the folders as for
local runs. The float models that fine-tuning runs start from are trained first, as a wave of their own.
Workers read and write ``--out`` directly, so it must be one folder that every worker sees: the driver writes
a token file there and each worker checks it before it runs anything.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.data import resolve_root
from benchmarks.harness import rundir
from benchmarks.harness.grid import float_warmups
from benchmarks.harness.runner import EXECUTOR_ENV, RunSpec, execute
from methods import ConfigError

log = logging.getLogger(__name__)

EXTRAS = {"ray": "ray", "slurm": "submitit"}  # executor -> the module its extra installs
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")  # never shared between the nodes of a cluster (nor $TMPDIR)


class OutputNotVisible(ConfigError):
    """A worker does not see the driver's output folder: its runs would land where no report finds them."""

    def __init__(self, out: Path, node: str):
        super().__init__(f"output folder {out} is not visible from worker on node {node}; "
                         f"put --out on a shared filesystem")


@dataclass(frozen=True)
class ClusterOptions:
    executor: str  # ray or slurm
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    ray_address: str | None = None
    ray_max_retries: int = 2
    slurm_partition: str | None = None
    slurm_time: int = 240  # minutes; a run that outlives it is requeued and resumes from its checkpoint
    slurm_max_parallel: int | None = None
    slurm_options: tuple[tuple[str, str], ...] = ()
    slurm_cluster: str = "slurm"


@dataclass(frozen=True)
class NotVisible:
    """What a worker returns instead of a result when it cannot see the driver's token."""
    node: str


@dataclass(frozen=True)
class RunTask:
    """The worker side of one run: check that the output folder is the driver's, then ``execute``."""
    out: Path
    data_dir: str
    device: str
    threads: int
    token: str
    executor: str = "ray"

    def output_visible(self) -> bool:
        try:
            return (self.out / f".reach-{self.token}").read_text() == self.token
        except OSError:
            return False

    def __call__(self, spec: RunSpec) -> dict | NotVisible:
        if not self.output_visible():
            return NotVisible(socket.gethostname())
        torch.set_num_threads(self.threads)  # the cores this run was given, not all of the node's
        os.environ[EXECUTOR_ENV] = self.executor  # recorded with the run (``runner.environment``)
        return execute(spec, self.out, self.data_dir, self.device, progress=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster executors (pip install 'scnn-bench[ray]' or 'scnn-bench[slurm]')")
    g.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                   help="where runs execute (default: local, in this process or --jobs processes)")
    g.add_argument("--cpus-per-run", type=float, metavar="N",
                   help="CPUs reserved per run, also its torch threads (default: 1; Ray allows fractions)")
    g.add_argument("--gpus-per-run", type=float, metavar="N",
                   help="GPUs reserved per run (default: 0; Ray allows fractions)")
    g.add_argument("--ray-address", help="join this Ray cluster (e.g. auto, head:6379); default: start a local one")
    g.add_argument("--ray-max-retries", type=int, metavar="N",
                   help="retries of a run whose Ray worker died (default: 2)")
    g.add_argument("--slurm-partition", help="SLURM partition of the job array")
    g.add_argument("--slurm-time", type=int, metavar="MINUTES", help="time limit per run (default: 240)")
    g.add_argument("--slurm-max-parallel", type=int, metavar="N", help="array tasks running at once (default: SLURM's)")
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=proj or mem=32G (repeatable)")
    g.add_argument("--slurm-cluster", choices=["slurm", "local"],
                   help="slurm (default): submit with sbatch; local: run the job array as processes on this "
                        "machine, to try it before submitting")


def from_args(args: argparse.Namespace) -> ClusterOptions | None:
    """The cluster options, or None for the local executor; refuses misplaced or impossible flags and a
    missing extra up front, before anything trains."""
    flags = {"cpus_per_run": "ray slurm", "gpus_per_run": "ray slurm", "ray_address": "ray",
             "ray_max_retries": "ray", "slurm_partition": "slurm", "slurm_time": "slurm",
             "slurm_max_parallel": "slurm", "slurm_option": "slurm", "slurm_cluster": "slurm"}
    for name, executors in flags.items():
        if getattr(args, name) not in (None, []) and args.executor not in executors.split():
            raise ConfigError(f"--{name.replace('_', '-')} applies to --executor {' or '.join(executors.split())}")
    if args.executor == "local":
        return None
    if args.jobs > 1:
        raise ConfigError(f"--jobs applies to --executor local; {args.executor} runs as many runs at once as "
                          f"its workers fit (--cpus-per-run, --gpus-per-run)")
    given = {k: v for k, v in vars(args).items() if k in flags and v not in (None, [])}
    for name in ("ray_address", "slurm_partition"):
        if name in given and not given[name].strip():
            raise ConfigError(f"--{name.replace('_', '-')} is empty; name one or leave the flag out")
    given["slurm_options"] = tuple(_key_value(o) for o in given.pop("slurm_option", []))
    opts = ClusterOptions(args.executor, **given)
    bounds = [("--cpus-per-run", opts.cpus_per_run, True), ("--gpus-per-run", opts.gpus_per_run, False),
              ("--ray-max-retries", opts.ray_max_retries, False), ("--slurm-time", opts.slurm_time, True),
              ("--slurm-max-parallel", opts.slurm_max_parallel, True)]  # (flag, value, must be above 0)
    for flag, value, positive in bounds:
        if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise ConfigError(f"{flag} must be a finite number {'above' if positive else 'of at least'} 0, "
                              f"got {value:g}")
        if opts.executor == "slurm" and value is not None and value != int(value):
            raise ConfigError(f"{flag} must be a whole number for --executor slurm (SLURM allocates whole CPUs "
                              f"and GPUs), got {value:g}")
    if (args.device or "").startswith("cuda") and not opts.gpus_per_run:
        raise ConfigError("--device cuda on a cluster needs --gpus-per-run above 0, or the runs get no GPU")
    _require_extra(args.executor)
    return opts


def run(opts: ClusterOptions, specs: list[RunSpec], out: str | Path, data_dir: str | None,
        device: str | None) -> list[dict]:
    """Run every unfinished spec on the cluster, float models first; results in the order of ``specs``.

    Raises ``OutputNotVisible`` when a worker cannot see ``out``, before any of its runs starts."""
    out = Path(out).resolve()  # workers start elsewhere: every path they get is absolute
    node_local = [Path(p).resolve() for p in (*NODE_LOCAL, tempfile.gettempdir())]
    if opts.executor == "slurm" and opts.slurm_cluster == "slurm" and any(
            out == p or p in out.parents for p in node_local):
        raise ConfigError(f"output folder {out} is on node-local storage, which SLURM jobs on other nodes "
                          f"do not see; put --out on a shared filesystem")
    results = {s.run_id: r for s in specs if (r := finished(s, out)) is not None}
    pending = [s for s in specs if s.run_id not in results]
    warm = float_warmups(pending)
    waves = [w for w in (warm, [s for s in pending if s not in warm]) if w]
    log.info("%s: %d runs to do (%d already finished), %d float-model runs first", opts.executor, len(pending),
             len(results), len(warm))
    token = uuid.uuid4().hex
    task = RunTask(out, str(resolve_root(data_dir).resolve()), device or ("cuda" if opts.gpus_per_run else "cpu"),
                   max(1, int(opts.cpus_per_run)), token, opts.executor)
    backend = importlib.import_module(f"benchmarks.harness.{opts.executor}_executor")
    write_token(out, token)
    try:
        results.update(backend.run(opts, waves, task))
    finally:
        (out / f".reach-{token}").unlink(missing_ok=True)
    return [results[s.run_id] for s in specs]


def write_token(out: Path, token: str) -> None:
    """The file a worker must read back (``RunTask.output_visible``) before it runs anything."""
    (out / f".reach-{token}").write_text(token)


def finished(spec: RunSpec, out: Path) -> dict | None:
    """The result of a run that already finished, so that no cluster job is spent finding that out."""
    return rundir.finished(out / "runs" / spec.run_id)


def _require_extra(executor: str) -> None:
    try:
        importlib.import_module(EXTRAS[executor])
    except ImportError as e:
        raise ConfigError(f"--executor {executor} needs {EXTRAS[executor]} ({e}); "
                          f"pip install 'scnn-bench[{executor}]'") from None


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"bad --slurm-option {item!r}; write it as KEY=VALUE (e.g. account=myproject)")
    return key, value
