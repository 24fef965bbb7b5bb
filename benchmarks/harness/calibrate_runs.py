"""Give the finished runs of a results folder that predate BatchNorm calibration their calibrated twins,
without training again.

Calibration (``benchmarks.harness.calibration``) comes after training and reads only the artifact, so a run
trained without it holds exactly the artifact a calibrated run of the same spec would calibrate. For each
such run this writes the twin a grid now names (the same spec with ``bn_batches``): ``model.packed``
calibrated, ``history.jsonl`` copied, ``result.json`` with the calibrated accuracy, the old one as
``accuracy_before_calibration`` (checked against the old result: the decoded network must score what it
did; on another device than the training's, up to a warning), the training's ``environment`` and budget
seconds kept, ``calibrated_from`` naming the old run and ``calibration_device``. The old folders, and those of
failed uncalibrated runs (a grid with calibration would not retry them under their old names), then move to
``--stale-to`` (default ``<out>-uncalibrated``), so that the folder's tables hold one version of each run;
nothing is deleted. Folders without a result, and runs that cannot be calibrated (each named in one warning:
files that do not check out, a spec from another scnn-bench version), stay where they are.

    python -m benchmarks.harness.calibrate_runs results/cpu --data-dir ../shared/data
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from benchmarks.accounting import packing
from benchmarks.argparsing import Parser
from benchmarks.data import DataError, Dataset, load_dataset
from benchmarks.harness.calibration import BN_BATCHES, pack_and_score
from benchmarks.files import write_json
from benchmarks.harness.rundir import RESULT_SCHEMA, finished, held, missing_runs, read_result
from benchmarks.harness.runner import RunSpec, budget, environment
from benchmarks.device import pick_device
from methods import get_method

log = logging.getLogger(__name__)


def calibrate_run(folder: Path, data: Dataset, bn_batches: int) -> Path:
    """Write the calibrated twin of the finished, uncalibrated run in ``folder``; returns the twin's folder
    (its result is reused when it already finished)."""
    old = finished(folder)
    if old is None:
        raise ValueError(f"run {folder.name} has not finished")
    spec = RunSpec.from_dict(old["spec"])
    if spec.run_id != folder.name:
        raise ValueError(f"run {folder.name}'s spec names run {spec.run_id}: written by another scnn-bench version")
    if spec.bn_batches:
        raise ValueError(f"run {folder.name} is calibrated already")
    if spec.data_fingerprint != data.fingerprint:
        raise DataError(f"run {folder.name} trained on data {spec.data_fingerprint}, not on the data loaded "
                        f"({data.fingerprint}); pass the --data-dir it was trained with")
    twin = replace(spec, bn_batches=bn_batches)
    dest = folder.parent / twin.run_id
    dest.mkdir(exist_ok=True)
    with held(dest, wait=True):
        if finished(dest) is not None:
            return dest
        try:
            _write_twin(folder, old, spec, twin, dest, data)
        except BaseException:  # no half-written twin is left behind
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return dest


def _write_twin(folder: Path, old: dict, spec: RunSpec, twin: RunSpec, dest: Path, data: Dataset) -> None:
    scored = pack_and_score(packing.load(folder / "model.packed"), dest / "model.packed", data, twin.bn_batches,
                            twin.train.batch_size, twin.seed)
    config = json.loads((folder / "config.json").read_text())
    if abs(scored["accuracy_before_calibration"] - old["accuracy"]) > 1e-6:
        trained_on = str(config.get("device", "?"))
        if trained_on.split(":")[0] == data.train.images.device.type:
            raise ValueError(f"run {folder.name} decodes to {scored['accuracy_before_calibration']:.2f} % "
                             f"but recorded {old['accuracy']:.2f} %")
        log.warning("run %s scores %.2f %% here (%s), %.2f %% where it trained (%s)", folder.name,
                    scored["accuracy_before_calibration"], data.train.images.device, old["accuracy"], trained_on)
    shutil.copyfile(folder / "history.jsonl", dest / "history.jsonl")
    write_json(dest / "config.json", {**config, **twin.as_dict(), "run_id": twin.run_id,
                                      "calibrated_from": folder.name})
    method = get_method(spec.method).from_params(**dict(spec.params))
    was = old["budget"]
    write_json(dest / "result.json", {
        **old, **scored, "schema": RESULT_SCHEMA, "run_id": twin.run_id, "spec": twin.as_dict(), "calibrated_from": folder.name,
        "calibration_environment": environment(), "calibration_device": str(data.train.images.device),
        "budget": budget(twin, method, len(data.train), was.get("float_seconds", 0.0),
                         was.get("method_seconds", 0.0), was.get("float_digest"))})


def calibrate_folder(out: Path, data_dir: str | None, bn_batches: int = BN_BATCHES, stale_to: Path | None = None,
                     device: str | None = None) -> tuple[int, int, int]:
    """Calibrate every finished, uncalibrated run of ``out`` and move it (and every failed, uncalibrated run)
    to ``stale_to``; returns (runs calibrated, folders moved, runs that could not be calibrated)."""
    stale_to = stale_to or out.with_name(f"{out.name}-uncalibrated")
    dev = pick_device(device)
    todo, datasets = [], {}
    for folder in sorted(d for d in out.glob("runs/*") if d.is_dir()):
        r = read_result(folder)  # deep: a run whose files do not check out is named in a warning and stays
        if r is not None and not r["spec"].get("bn_batches"):
            todo.append((folder, r))
    n_done = n_moved = n_bad = 0
    for folder, r in tqdm(todo, desc="calibrating", disable=None):
        name = r["spec"]["dataset"]
        if r["status"] == "ok" and name not in datasets:  # data that cannot be loaded stops it all (exit 2)
            datasets[name] = load_dataset(name, data_dir, dev)
        with held(folder) as mine:
            if not mine:
                log.warning("run %s is held by another process; it stays where it is", folder.name)
                continue
            try:
                if r["status"] == "ok":
                    calibrate_run(folder, datasets[name], bn_batches)
                    n_done += 1
                target = stale_to / "runs" / folder.name
                if target.exists():
                    log.warning("%s exists already; %s stays where it is", target, folder)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(folder), str(target))
                n_moved += 1
            except (ValueError, KeyError, TypeError, OSError, DataError) as e:
                log.warning("run %s is not calibrated and stays where it is: %s", folder.name, e)
                n_bad += 1
    return n_done, n_moved, n_bad


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="results folder holding runs/ (e.g. results/cpu)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $SCNN_DATA, else ./data)")
    p.add_argument("--bn-batches", type=int, default=BN_BATCHES,
                   help="training batches of the calibration: the preset's, so that a grid finds the twins "
                        "(default: %(default)s, the cpu and paper presets'; smoke: 4)")
    p.add_argument("--stale-to", type=Path, help="where the uncalibrated runs move (default: <out>-uncalibrated)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.bn_batches < 1:
        print(f"error: --bn-batches must be >= 1, got {args.bn_batches}", file=sys.stderr)
        return 2
    if (error := missing_runs(args.out)) is not None:
        print(error, file=sys.stderr)
        return 2
    try:
        n_done, n_moved, n_bad = calibrate_folder(args.out, args.data_dir, args.bn_batches, args.stale_to,
                                                  args.device)
    except (ValueError, DataError) as e:  # the data set or the device
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("%d runs calibrated, %d uncalibrated folders moved, %d not calibrated (named above); rebuild the "
             "tables with python -m benchmarks.report.figures %s", n_done, n_moved, n_bad, args.out)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
