"""``python -m benchmarks.export PATH [PATH ...]``: every finished run's network, as decoded from its
``model.packed`` with removed channels physically absent, written as an ONNX model a runtime can load, and
checked against the decoded PyTorch model on the whole test set.

PATH is a run folder or a results folder (then every finished run in it). Weights whose codes fit in 8 bits
are stored as 8-bit integers and decoded inside the graph, so the file really is small:

- ``channel`` codes (self-compression): int8 with a float32 scale per output channel (2^e, or the stored
  scale), through ``DequantizeLinear`` (axis 0): exactly the decoded weights;
- ``codebook`` indices (weight fixing): uint8 indices into the float32 codebook, through ``Gather``: exact;
- ``group`` codes (DiffQ): uint8 with each group's step and the tensor's low end, through Cast, Mul and Add:
  the decoded weights up to float32 rounding.

Anything else (codes wider than 8 bits, float layers) stays a float32 initializer. Writes ``<run>/model.onnx``
and, per results folder, ``onnx.csv``: the file's size beside the packed file's, which layers are 8-bit, the
largest logit difference against PyTorch, and the accuracy onnxruntime gives (flip test-time augmentation, as
every score here) against the run's. The reports add ``onnx_bytes`` to ``results.csv``. Needs the ``deploy``
extra (``pip install 'scnn-bench[deploy]'``).
"""
from __future__ import annotations

import datetime
import io
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmarks.accounting import packing
from benchmarks.argparsing import Parser
from benchmarks.compressed import CompressedModel, LayerCode, dead_outputs, decode_layer, to_module
from benchmarks.data import DataError, Split, load_dataset, normalize
from benchmarks.files import replacing
from benchmarks.harness.rundir import finished
from benchmarks.topology import dead_space_channels

log = logging.getLogger(__name__)

OPSET = 17  # DequantizeLinear per axis needs 13; 17 is what onnxruntime and the exporter both know well
BATCH = 500


class MissingExtra(RuntimeError):
    pass


def _onnx():
    """The onnx and onnxruntime modules, or ``MissingExtra`` naming the extra that installs them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingExtra(f"ONNX export needs {e.name}, which is not installed: pip install "
                           f"'scnn-bench[deploy]'") from None
    return onnx, onnxruntime


def kept(cm: CompressedModel, layer: LayerCode) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the output and input channels of ``layer`` (exported shape) that the decoded network keeps,
    in the order ``to_module`` keeps them."""
    dead = dead_space_channels(cm.topology, dead_outputs(cm))
    node = cm.topology.node(layer.name)
    out = torch.nonzero(~dead[node.out_space]).flatten() if node.out_space in dead else torch.arange(layer.shape[0])
    if node.in_space in dead:
        inp = torch.nonzero((~dead[node.in_space]).repeat_interleave(node.in_factor)).flatten()
    else:
        inp = torch.arange(layer.shape[1])
    return out, inp


def _int8_form(cm: CompressedModel, layer: LayerCode, weight: torch.Tensor, name: str):
    """(nodes, initializers) computing ``weight`` (the decoded module's tensor ``name``) from 8-bit codes, or
    None when the layer's codes do not fit 8 bits or its stored form does not reproduce the weight."""
    from onnx import helper, numpy_helper

    out, inp = kept(cm, layer)
    pick = lambda t: t.index_select(0, out).index_select(1, inp)  # noqa: E731
    if layer.scheme == "channel" and int(layer.bits.max()) <= 8:
        scale = layer.scales.float() if layer.scales is not None else torch.pow(2.0, layer.exponents.double()).float()
        codes, scale = pick(layer.codes), scale.index_select(0, out)
        if not torch.equal((codes.double() * scale.double().view(-1, *[1] * (codes.dim() - 1))).float(), weight):
            return None
        return ([helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.scale", f"{name}.zero"], [name], axis=0)],
                [numpy_helper.from_array(codes.numpy().astype(np.int8), f"{name}.q"),
                 numpy_helper.from_array(scale.numpy(), f"{name}.scale"),
                 numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}.zero")])
    if layer.scheme == "codebook" and cm.codebook is not None and len(cm.codebook) <= 256:
        idx = pick(layer.codes)
        if not torch.equal(cm.codebook[idx], weight):
            return None
        return ([helper.make_node("Cast", [f"{name}.idx"], [f"{name}.idx32"], to=6),  # int32
                 helper.make_node("Gather", [f"{name}.codebook", f"{name}.idx32"], [name], axis=0)],
                [numpy_helper.from_array(idx.numpy().astype(np.uint8), f"{name}.idx"),
                 numpy_helper.from_array(cm.codebook.float().numpy(), f"{name}.codebook")])
    if layer.scheme == "group" and int(layer.bits.max()) <= 8 and tuple(weight.shape) == layer.shape:
        n, gs = layer.codes.numel(), layer.group_size
        g = len(layer.bits)
        codes = np.zeros(g * gs, np.uint8)
        codes[:n] = layer.codes.reshape(-1).numpy()
        step = ((layer.hi - layer.lo) / (torch.pow(2.0, layer.bits.double()) - 1)).float().numpy().reshape(g, 1)
        if not torch.equal(decode_layer(layer), weight):
            return None
        return ([helper.make_node("Cast", [f"{name}.q"], [f"{name}.qf"], to=1),
                 helper.make_node("Reshape", [f"{name}.qf", f"{name}.groups"], [f"{name}.qg"]),
                 helper.make_node("Mul", [f"{name}.qg", f"{name}.step"], [f"{name}.scaled"]),
                 helper.make_node("Add", [f"{name}.scaled", f"{name}.lo"], [f"{name}.flatg"]),
                 helper.make_node("Reshape", [f"{name}.flatg", f"{name}.flat"], [f"{name}.padded"]),
                 helper.make_node("Slice", [f"{name}.padded", f"{name}.start", f"{name}.end"], [f"{name}.sliced"]),
                 helper.make_node("Reshape", [f"{name}.sliced", f"{name}.shape"], [name])],
                [numpy_helper.from_array(codes, f"{name}.q"), numpy_helper.from_array(step, f"{name}.step"),
                 numpy_helper.from_array(np.array(layer.lo, np.float32), f"{name}.lo"),
                 numpy_helper.from_array(np.array([g, gs], np.int64), f"{name}.groups"),
                 numpy_helper.from_array(np.array([-1], np.int64), f"{name}.flat"),
                 numpy_helper.from_array(np.array([0], np.int64), f"{name}.start"),
                 numpy_helper.from_array(np.array([n], np.int64), f"{name}.end"),
                 numpy_helper.from_array(np.array(layer.shape, np.int64), f"{name}.shape")])
    return None


def to_onnx(cm: CompressedModel, eight_bit: bool = True) -> tuple[bytes, list[str]]:
    """The ONNX model of ``cm``'s decoded network (batch dimension free) and the layers stored in 8 bits;
    with ``eight_bit=False`` every weight is a float32 initializer (a larger file that onnxruntime can fold
    into its convolutions: ``experiments/ort_sessions.py``)."""
    onnx, _ = _onnx()
    module = to_module(cm)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of dynamo's, which
        warnings.simplefilter("ignore", category=DeprecationWarning)  # needs onnxscript; this one is enough
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(module, torch.zeros(1, 3, 32, 32), buf, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          do_constant_folding=False, dynamo=False)  # no folding: BN stays, weights stay whole
    model = onnx.load_from_string(buf.getvalue())
    graph = model.graph
    state = module.state_dict()
    inits = {i.name: i for i in graph.initializer}
    nodes, int8 = [], []
    for layer in cm.layers:
        name = f"{layer.name}.weight"
        form = _int8_form(cm, layer, state[name].detach(), name) if eight_bit and name in inits else None
        if form is None:
            continue
        graph.initializer.remove(inits[name])
        graph.initializer.extend(form[1])
        nodes += form[0]
        int8.append(layer.name)
    for node in reversed(nodes):  # the weights are computed before anything uses them
        graph.node.insert(0, node)
    model.producer_name, model.producer_version = "scnn-bench", ""
    onnx.checker.check_model(model)
    return model.SerializeToString(), int8


def session(data: bytes, exact: bool = True, device: str = "cpu"):
    """An onnxruntime session on ``device`` ("cpu", or "cuda": the CUDA provider of onnxruntime-gpu).
    ``exact`` turns off onnxruntime's QDQ rewrites: by default it turns a DequantizeLinear feeding Gemm into
    MatMulNBits, which quantizes the activations too (measured on a self-compression run: logits off by up to
    0.02, 3 of 10,000 images classified differently)."""
    _, ort = _onnx()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if exact:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}[device]
    return ort.InferenceSession(data, options, providers=providers)


def check(data: bytes, cm: CompressedModel, split: Split) -> dict:
    """Logits of the ONNX model (onnxruntime, CPU, QDQ rewrites off) against the decoded PyTorch model over
    ``split``: the largest absolute difference, how many images the two classify differently and both
    accuracies (flip TTA); and the accuracy under onnxruntime's default session, rewrites on."""
    exact, default = session(data), session(data, exact=False)
    module = to_module(cm)
    diff, correct, correct_torch, correct_default, disagree = 0.0, 0, 0, 0, 0
    with torch.no_grad():
        for i in range(0, len(split), BATCH):
            x = normalize(split.images[i:i + BATCH].cpu())
            y = split.labels[i:i + BATCH].cpu().numpy()
            ours = sum(exact.run(["logits"], {"images": v.numpy()})[0] for v in (x, x.flip(3)))
            rewritten = sum(default.run(["logits"], {"images": v.numpy()})[0] for v in (x, x.flip(3)))
            theirs = (module(x) + module(x.flip(3))).numpy()
            diff = max(diff, float(np.abs(ours - theirs).max()))
            correct += int((ours.argmax(1) == y).sum())
            correct_torch += int((theirs.argmax(1) == y).sum())
            correct_default += int((rewritten.argmax(1) == y).sum())
            disagree += int((ours.argmax(1) != theirs.argmax(1)).sum())
    n = len(split)
    return {"max_logit_diff": diff, "images_classified_differently": disagree, "onnx_accuracy": 100.0 * correct / n,
            "torch_accuracy": 100.0 * correct_torch / n, "onnx_accuracy_default_session": 100.0 * correct_default / n}


def export_run(folder: Path, result: dict, split: Split) -> dict:
    """Write ``<folder>/model.onnx`` for a finished run (``result``: its checked ``result.json``) and return
    its ``onnx.csv`` row."""
    cm = packing.load(folder / "model.packed")
    data, int8 = to_onnx(cm)
    with replacing(folder / "model.onnx") as tmp:
        tmp.write_bytes(data)
    row = {"run_id": folder.name, "method": result["spec"]["method"], "onnx_bytes": len(data),
           "packed_bytes": (folder / "model.packed").stat().st_size, "int8_layers": len(int8),
           "float_layers": len(cm.layers) - len(int8), "run_accuracy": result["accuracy"], **check(data, cm, split),
           "opset": OPSET, "exported": datetime.date.today().isoformat()}
    log.info("%s: %s, %d bytes (%d of %d layers 8-bit), onnxruntime %.2f%% against the run's %.2f%%", folder.name,
             row["method"], len(data), len(int8), len(cm.layers), row["onnx_accuracy"], row["run_accuracy"])
    return row


def _runs(path: Path) -> tuple[Path, dict[Path, dict]]:
    """(results folder, its finished runs' folders and results) of a PATH argument."""
    if (path / "runs").is_dir():
        runs = {d: r for d in sorted((path / "runs").iterdir()) if d.is_dir() and (r := finished(d)) is not None}
        if not runs:
            raise ValueError(f"{path / 'runs'} holds no finished run to export; pass a results folder that "
                             f"run_all.py wrote (e.g. results/cpu)")
        return path, runs
    if (path / "result.json").is_file() and path.parent.name == "runs":
        r = finished(path)
        if r is None:
            raise ValueError(f"run {path.name} has not finished (or its files do not check out)")
        return path.parent.parent, {path: r}
    raise ValueError(f"{path} is neither a run folder nor a results folder holding runs/")


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.export", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="run folders or results folders (every finished run)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $SCNN_DATA, else ./data)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _onnx()
        targets = [_runs(path) for path in args.paths]
        datasets: dict[str, Split] = {}
        for out, runs in targets:
            done = _exported(out)
            todo = {folder: r for folder, r in runs.items() if folder.name not in done}
            if len(todo) < len(runs):
                log.info("%s: %d of %d runs already exported (their model.onnx matches onnx.csv); skipped", out,
                         len(runs) - len(todo), len(runs))
            for folder, result in tqdm(todo.items(), desc=f"exporting {out}", disable=None):
                dataset = result["spec"]["dataset"]
                if dataset not in datasets:
                    datasets[dataset] = load_dataset(dataset, args.data_dir).test
                # one row at a time: an interruption keeps every run exported so far
                _write_rows(out, [export_run(folder, result, datasets[dataset])])
    except (MissingExtra, ValueError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _exported(out: Path) -> set[str]:
    """The runs of ``out`` whose row in ``onnx.csv`` describes the ``model.onnx`` they hold (same size, this
    opset) and whose file is newer than their ``model.packed``: an interrupted export resumes after them. A run
    trained again (in place, or rolled forward from a rerun) loses its ``model.onnx`` and is exported anew."""
    f = out / "onnx.csv"
    try:
        rows = pd.read_csv(f)[["run_id", "onnx_bytes", "opset"]] if f.is_file() else pd.DataFrame()
    except (OSError, ValueError, KeyError):
        return set()
    done = set()
    for r in rows.itertuples():
        onnx_file, packed = out / "runs" / str(r.run_id) / "model.onnx", out / "runs" / str(r.run_id) / "model.packed"
        if (onnx_file.is_file() and packed.is_file() and r.opset == OPSET and onnx_file.stat().st_size == r.onnx_bytes
                and onnx_file.stat().st_mtime_ns >= packed.stat().st_mtime_ns):
            done.add(str(r.run_id))
    return done


def _write_rows(out: Path, rows: list[dict]) -> None:
    """Merge ``rows`` into ``<out>/onnx.csv`` (a run exported again replaces its row)."""
    f = out / "onnx.csv"
    old = pd.read_csv(f) if f.is_file() else pd.DataFrame(columns=["run_id"])
    new = pd.DataFrame(rows)
    merged = pd.concat([old[~old.run_id.isin(new.run_id)], new], ignore_index=True).sort_values("run_id")
    with replacing(f) as tmp:
        merged.to_csv(tmp, index=False)


if __name__ == "__main__":
    sys.exit(main())
