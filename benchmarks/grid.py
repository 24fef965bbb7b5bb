"""Expanding method grids into run specs and running them, one process or several."""
from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any, Iterable

import torch

from benchmarks.data import Dataset
from benchmarks.presets import Preset
from benchmarks.runner import RunSpec, execute
from methods import ConfigError, get_method
from methods.base import make_config


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
        out.setdefault(method, {})[param] = [parse_value(v) for v in values.split(",")]
    return out


def expand(preset: Preset, methods: list[str], seeds: list[int], overrides: dict[str, dict[str, list[Any]]],
           epochs: int | None = None) -> list[RunSpec]:
    """Every (method, parameter combination, seed) of the grid, validated before anything trains."""
    for m in overrides:
        if m not in methods:
            raise ConfigError(f"--grid names method {m!r}, which is not among the methods run ({', '.join(methods)})")
    specs = []
    for name in methods:
        cls = get_method(name)
        grid = dict(cls.default_grid.get(preset.name, {}))
        grid.update(overrides.get(name, {}))
        keys = sorted(grid)
        for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            params = dict(zip(keys, combo))
            method = cls(make_config(cls.Config, dict(params), name))  # refuses unknown keys and bad values
            full = tuple(sorted(dataclasses.asdict(method.config).items()))  # defaults too: they name the run
            for seed in seeds:
                tr = replace(preset.method_train, epochs=epochs or preset.method_train.epochs, seed=seed)
                fl = replace(preset.float_train, seed=seed)
                specs.append(RunSpec(name, full, seed, preset.dataset, preset.model,
                                     fl if method.needs_float_model and not method.phases(1) else tr, fl))
    return specs


def run_all(specs: list[RunSpec], out: str, data_dir: str | None, device: str | None, jobs: int = 1,
            data: Dataset | None = None) -> list[dict]:
    """Run every spec; with ``jobs > 1`` in worker processes (float-model runs first, so they are cached).

    ``data``, when given, is the data set every spec uses, already on the device (one process only)."""
    if jobs <= 1:
        return [execute(s, out, data_dir, device, data=data) for s in specs]
    # one run per float model first, so that the runs reusing it find it in the cache
    warm = list({(s.model, s.dataset, s.float_train): s for s in specs
                 if get_method(s.method).from_params(**dict(s.params)).needs_float_model}.values())
    # spawn, not fork: a forked child inherits torch's thread pools half-initialised and can hang
    threads = max(1, (os.cpu_count() or 1) // jobs)  # share the cores instead of oversubscribing them
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        list(pool.map(execute, warm, [out] * len(warm), [data_dir] * len(warm), [device] * len(warm),
                      [None] * len(warm), [False] * len(warm)))
        return list(pool.map(execute, specs, [out] * len(specs), [data_dir] * len(specs), [device] * len(specs),
                              [None] * len(specs), [False] * len(specs)))
