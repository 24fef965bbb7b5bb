"""Grid runs as Ray tasks, each with its own CPUs and GPUs (``--executor ray``; needs scnn-bench[ray]).

A run that raises is already recorded as failed by ``execute``; what Ray adds is surviving the death of a
worker (killed for memory, a lost node): the task is retried, and the retry resumes from the run's last
epoch checkpoint. A run whose retries are all spent is recorded as failed from the driver.
"""
from __future__ import annotations

import logging
import socket

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from benchmarks.checkpoints import brief
from benchmarks.harness.executors import ClusterOptions, NotVisible, OutputNotVisible, RunTask, finished
from benchmarks.harness.runner import RunSpec, record_failure
from methods import ConfigError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
PROBE_TIMEOUT_S = 300  # a node busy starting workers can be slow, but one that never answers is an error


@ray.remote(num_cpus=0)
def _probe(task: RunTask) -> tuple[str, bool]:
    return socket.gethostname(), task.output_visible()


@ray.remote
def _run(task: RunTask, spec: RunSpec) -> dict | NotVisible:
    return task(spec)


def run(opts: ClusterOptions, waves: list[list[RunSpec]], task: RunTask) -> dict[str, dict]:
    """Run each wave to its end before the next; joins ``--ray-address`` or starts (and stops) a local Ray."""
    connected = _connect(opts.ray_address)
    try:
        _check_nodes(opts, task)
        results: dict[str, dict] = {}
        for wave in waves:
            results.update(_run_wave(opts, wave, task))
        return results
    finally:
        if connected:
            ray.shutdown()


def _connect(address: str | None) -> bool:
    """Connect unless this process already is (as in the tests); True when it connected, so that it
    disconnects at the end, which also stops a local Ray it started."""
    host, sep, port = (address or "").rpartition(":")
    if sep and host and port.isdigit() and "://" not in address:  # Ray itself retries a dead address for minutes
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise ConfigError(f"no Ray head answers at {address} ({e.strerror or e}); check --ray-address "
                              f"(`ray start --head` prints it)") from None
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"could not join the Ray cluster at {address} ({brief(e)}); check --ray-address") from None
    return True


def _check_nodes(opts: ClusterOptions, task: RunTask) -> None:
    """Every node that can take a run must see the output folder; a probe task on each reads the token."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    able = [n for n in nodes if n["Resources"].get("CPU", 0) >= opts.cpus_per_run
            and n["Resources"].get("GPU", 0) >= opts.gpus_per_run]
    if not able:
        raise ConfigError(f"no node of the Ray cluster has room for one run ({opts.cpus_per_run:g} CPUs, "
                          f"{opts.gpus_per_run:g} GPUs); lower --cpus-per-run / --gpus-per-run or add such nodes")
    probes = [_probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(task)
              for n in able]
    try:
        answers = ray.get(probes, timeout=PROBE_TIMEOUT_S)
    except GetTimeoutError:
        raise ConfigError(f"a Ray node did not answer within {PROBE_TIMEOUT_S} s whether it sees "
                          f"{task.out}; check the cluster (ray status)") from None
    for host, visible in answers:
        if not visible:
            raise OutputNotVisible(task.out, host)
    log.info("output folder %s visible from all %d Ray nodes that fit a run", task.out, len(able))


def _run_wave(opts: ClusterOptions, wave: list[RunSpec], task: RunTask) -> dict[str, dict]:
    resources = dict(num_cpus=opts.cpus_per_run, num_gpus=opts.gpus_per_run, max_retries=opts.ray_max_retries,
                     retry_exceptions=True)
    # the task name (the worker's process title while it runs) says which run a worker holds
    refs = {_run.options(name=f"run-{s.run_id}", **resources).remote(task, s): s for s in wave}
    results: dict[str, dict] = {}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            spec = refs[ready[0]]
            results[spec.run_id] = _outcome(ready[0], spec, opts, task)
            log.info("run %s (%s) %s; %d of this wave left", spec.run_id, spec.method,
                     results[spec.run_id].get("status"), len(pending))
    except BaseException:  # interrupted, or a worker without the output folder: stop the rest
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results


def _outcome(ref: ray.ObjectRef, spec: RunSpec, opts: ClusterOptions, task: RunTask) -> dict:
    try:
        result = ray.get(ref)
    except RayError as e:
        cause = e.cause if isinstance(e, RayTaskError) and e.cause is not None else e
        return finished(spec, task.out) or record_failure(
            spec, task.out, f"its Ray task failed after {opts.ray_max_retries} retries ({brief(cause)}); rerun "
                            f"to resume it from its last epoch")
    if isinstance(result, NotVisible):
        raise OutputNotVisible(task.out, result.node)
    return result
