"""Expanding method grids into run specs and running them, one process or several."""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any, Iterable

import torch

from benchmarks.data import Dataset
from benchmarks.harness.presets import Preset
from benchmarks.harness.runner import EXECUTOR_ENV, RunSpec, execute, record_failure
from methods import ConfigError, get_method
from methods.base import make_config

log = logging.getLogger(__name__)


def parse_value(text: str) -> Any:
    """Grid values as JSON (numbers, true/false, quoted strings), bare words as strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid_overrides(items: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """``method.param=v1,v2`` → {method: {param: [v1, v2]}}."""
    out: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot or not method or not param or not values:
            raise ConfigError(f"bad --grid {item!r}; write it as method.param=v1,v2 (e.g. self_compression.gamma=0.01,0.1)")
        if param in out.get(method, {}):  # the last would silently win
            raise ConfigError(f"--grid gives {method}.{param} twice; list every value once: {method}.{param}=v1,v2")
        out.setdefault(method, {})[param] = [parse_value(v) for v in values.split(",")]
    return out


def expand(preset: Preset, methods: list[str], seeds: list[int], overrides: dict[str, dict[str, list[Any]]],
           epochs: int | None = None, strict: bool = True, precision: str = "fp32",
           bn_batches: int | None = None) -> list[RunSpec]:
    """Every (method, parameter combination, seed) of the grid, validated before anything trains, each run
    once, every schedule (float model's too) at ``precision``, every artifact calibrated over ``bn_batches``
    (default: the preset's); ``bind_data`` then names the data set. A method whose class breaks while its grid
    is built (a buggy plugin) is an error when ``strict``, else it is logged and skipped; a bad parameter value
    is always a ``ConfigError``."""
    for m in overrides:
        if m not in methods:
            raise ConfigError(f"--grid names method {m!r}, which is not among the methods run ({', '.join(methods)})")
    specs: dict[str, RunSpec] = {}
    for name in methods:
        cls = get_method(name)
        try:
            for spec in _method_specs(preset, name, cls, seeds, overrides.get(name, {}), epochs, precision,
                                      preset.bn_batches if bn_batches is None else bn_batches):
                specs.setdefault(spec.run_id, spec)
        except ConfigError:
            raise
        except Exception as e:
            msg = f"method {name!r} ({cls.__module__}) is broken: {type(e).__name__}: {e}; fix or uninstall it"
            if strict:
                raise ConfigError(msg) from None
            log.error("%s (skipped; the other methods still run)", msg)
    return list(specs.values())


def _method_specs(preset: Preset, name: str, cls: type, seeds: list[int], overrides: dict[str, list[Any]],
                  epochs: int | None, precision: str, bn_batches: int) -> list[RunSpec]:
    grid = {**cls.default_grid.get(preset.name, {}), **overrides}
    keys = sorted(grid)
    specs = []
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        method = cls(make_config(cls.Config, dict(zip(keys, combo)), name))  # refuses unknown keys, bad values
        full = tuple(sorted(dataclasses.asdict(method.config).items()))  # defaults too: they name the run
        for seed in seeds:
            tr = replace(preset.method_train, epochs=epochs or preset.method_train.epochs, seed=seed,
                         precision=precision)
            fl = replace(preset.float_train, seed=seed, precision=precision)
            specs.append(RunSpec(name, full, seed, preset.dataset, "", preset.model,
                                 fl if method.needs_float_model and not method.phases(1) else tr, fl, bn_batches))
    return specs


def bind_data(specs: list[RunSpec], data: Dataset) -> list[RunSpec]:
    """The specs for this data set: its content fingerprint becomes part of every run id."""
    return [replace(s, data_fingerprint=data.fingerprint) for s in specs]


def float_warmups(specs: list[RunSpec]) -> list[RunSpec]:
    """One spec per float model the grid needs: run these first, so that the runs reusing a float model
    find it in the cache instead of several workers training it at once."""
    return list({(s.model, s.data_fingerprint, s.float_train): s for s in specs
                 if get_method(s.method).from_params(**dict(s.params)).needs_float_model}.values())


def run_all(specs: list[RunSpec], out: str, data_dir: str | None, device: str | None, jobs: int = 1,
            data: Dataset | None = None) -> list[dict]:
    """Run every spec; with ``jobs > 1`` in worker processes (float-model runs first, so they are cached).

    A run that another process is training (a second grid on the same folder) is put off to the end and
    then waited for. ``data``, when given, is the data set every spec uses, already on the device (one
    process only)."""
    if jobs <= 1:
        results = {s.run_id: execute(s, out, data_dir, device, data=data, wait=False) for s in specs}
        for s in specs:
            if results[s.run_id]["status"] == "busy":
                results[s.run_id] = execute(s, out, data_dir, device, data=data)
        return [results[s.run_id] for s in specs]
    _in_pool(float_warmups(specs), out, data_dir, device, jobs)
    return _in_pool(specs, out, data_dir, device, jobs)


def _in_pool(specs: list[RunSpec], out: str, data_dir: str | None, device: str | None, jobs: int) -> list[dict]:
    """Run specs in spawned workers, runs held by another grid last. A worker that dies (killed for
    memory, a crash in native code) breaks the pool: the runs it took down are retried one at a time, where
    the run that breaks the pool again is recorded as failed, so the rest of the grid still runs."""
    results: dict[str, dict] = {}
    pending, workers, wait = list(specs), jobs, False
    while pending:
        broken, busy = [], []
        for s, r in _pool_pass(pending, out, data_dir, device, workers, wait):
            if r is None:
                broken.append(s)
            elif r["status"] == "busy":
                busy.append(s)
            else:
                results[s.run_id] = r
        if broken and workers == 1:  # one worker takes runs in order: the first broken one killed it
            culprit = broken.pop(0)
            results[culprit.run_id] = record_failure(culprit, out, "its worker process died (out of memory? a "
                                                                   "crash in native code?); rerun to retry")
        workers = 1 if broken else workers
        wait = not broken  # the runs another grid holds are waited for once nothing else is left
        pending = broken + busy
    return [results[s.run_id] for s in specs]


def _worker_init(threads: int) -> None:
    # share the cores instead of oversubscribing them; Ctrl-C is the parent's to handle: it ends the
    # workers with SIGTERM, which exits them through Python (so they unregister what they hold, e.g. tqdm's
    # semaphore), and a worker never prints a KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_worker)
    torch.set_num_threads(threads)
    os.environ[EXECUTOR_ENV] = "local --jobs"


def _exit_worker(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _pool_pass(specs: list[RunSpec], out: str, data_dir: str | None, device: str | None, workers: int,
               wait: bool) -> list[tuple[RunSpec, dict | None]]:
    """(spec, result) for each spec, result None where the worker running it died."""
    # spawn, not fork: a forked child inherits torch's thread pools half-initialised and can hang
    pool = ProcessPoolExecutor(min(workers, len(specs)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(max(1, (os.cpu_count() or 1) // workers),))
    try:
        futures = [(pool.submit(execute, s, out, data_dir, device, None, False, wait), s) for s in specs]
        done = []
        for f, s in futures:
            try:
                done.append((s, f.result()))
            except BrokenProcessPool:
                done.append((s, None))
    except BaseException:  # Ctrl-C: end the workers now (their runs resume from the last epoch checkpoint)
        for p in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before Python 3.14
            p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)  # joins the dead workers and frees the pool's semaphores
        raise
    pool.shutdown()
    return done
