"""Validation of a packed file's JSON header against the architecture it names, before anything is allocated.

The header is untrusted input: every key and type is checked, the architecture is rebuilt on PyTorch's meta
device (shapes without storage) and every layer's kind, shapes, scheme fields and counts must agree with it,
and the byte lengths the header promises must add up to the file's length exactly. Only then does the reader
allocate anything, and then never more than the architecture's size (at most ``MAX_WEIGHTS`` weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from benchmarks.accounting.bitstream import PackedFileError
from benchmarks.compressed import SCHEMES, other_tensor_refs
from benchmarks.models import MODELS, ModelSpec, build_model, topology
from benchmarks.topology import Topology, weight_of

FORMAT = "scnn-bench packed model"
MAX_WEIGHTS = 1 << 25  # 5x the paper-size ResNet-9 (256 MB of int64 codes); a larger architecture is refused unbuilt
MAX_DEPTH = 32  # code bit depths (channel 0..32, group 1..32)
INT64 = 1 << 63
_TOP = {"format", "version", "arch", "topology", "layers", "codebook_size", "others"}
_LAYER = {"name", "kind", "shape", "full_shape", "scheme", "n_dead", "group_size", "nbytes"}
_OPTIONAL = {"bits", "exponents", "n_scales", "coding", "ans_words"}


@dataclass
class Plan:
    """What a validated header promises: the architecture and, per layer, its checked metadata."""

    arch: ModelSpec
    topology: Topology
    layers: list[dict]
    codebook_size: int
    others: list[tuple[str, tuple[int, ...]]]


def _fail(msg: str) -> None:
    raise PackedFileError(f"header: {msg}")


def _int(x: object, what: str, lo: int = 0, hi: int = INT64 - 1) -> int:
    if type(x) is not int or not lo <= x <= hi:
        _fail(f"{what} must be an integer in {lo}..{hi}, not {x!r}"[:200])
    return x


def _shape(x: object, what: str) -> tuple[int, ...]:
    if not isinstance(x, list) or not 1 <= len(x) <= 8:
        _fail(f"{what} must be a list of 1 to 8 integers")
    return tuple(_int(v, f"{what} entries", 1, MAX_WEIGHTS) for v in x)


def _keys(d: object, required: set[str], optional: set[str], what: str) -> dict:
    if not isinstance(d, dict):
        _fail(f"{what} must be an object")
    missing, unknown = required - d.keys(), d.keys() - required - optional
    if missing or unknown:
        _fail(f"{what}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    return d


def _arch(d: object) -> ModelSpec:
    d = _keys(d, {"name", "width", "num_classes"}, set(), "arch")
    if d["name"] not in MODELS:
        _fail(f"unknown architecture {str(d['name'])[:40]!r}")
    w = d["width"]
    if type(w) not in (int, float) or not (math.isfinite(w) and 0 < w <= 64):
        _fail("arch width must be a number in (0, 64]")
    return ModelSpec(d["name"], float(w) if type(w) is float else w, _int(d["num_classes"], "num_classes", 1, 1 << 16))


def _reference(spec: ModelSpec) -> tuple[Topology, dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Topology, full weight shapes and full other-tensor shapes of the architecture, built without storage."""
    with torch.device("meta"):
        model = build_model(spec)
    modules = dict(model.named_modules())
    topo = topology(model)
    shapes = {n.name: tuple(weight_of(modules[n.name]).shape) for n in topo.nodes}
    if sum(math.prod(s) for s in shapes.values()) > MAX_WEIGHTS:
        _fail(f"architecture {spec} has more than {MAX_WEIGHTS} weights")
    return topo, shapes, {k: tuple(t.shape) for k, t in other_tensor_refs(model).items()}


def _side_field(meta: dict, key: str, n: int, name: str) -> int:
    """Bits of a per-channel or per-group side array stored as offsets from ``min`` at ``width`` bits."""
    f = _keys(meta.get(key), {"n", "min", "width"}, set(), f"{name}.{key}")
    _int(f["n"], f"{name}.{key}.n", n, n)
    lo = _int(f["min"], f"{name}.{key}.min", -INT64, INT64 - 1)
    width = _int(f["width"], f"{name}.{key}.width", 0, 64)
    if lo + (1 << width) - 1 >= INT64:
        _fail(f"{name}.{key}: min + 2^width - 1 overflows int64")
    return n * width


def _layer(meta: object, node, full: tuple[int, ...], version: int) -> tuple[dict, int]:
    """The checked metadata of one layer and the number of side-information bits it promises."""
    meta = _keys(meta, _LAYER, _OPTIONAL, f"layer {node.name}")
    name = node.name
    if meta["name"] != name or meta["kind"] != node.kind:
        _fail(f"layer {name}: name/kind {str(meta['name'])[:40]}/{str(meta['kind'])[:10]} do not match the architecture")
    if _shape(meta["full_shape"], f"{name}.full_shape") != full:
        _fail(f"layer {name}: full_shape {meta['full_shape']} is not the architecture's {list(full)}")
    shape = _shape(meta["shape"], f"{name}.shape")
    if len(shape) != len(full) or shape[0] > full[0] or shape[2:] != full[2:]:
        _fail(f"layer {name}: shape {list(shape)} does not fit the architecture's {list(full)}")
    scheme = meta["scheme"]
    if scheme not in SCHEMES:
        _fail(f"layer {name}: unknown scheme {str(scheme)[:20]!r}")
    c, numel = shape[0], math.prod(shape)
    side = _int(meta["n_dead"], f"{name}.n_dead", 0, c) * max(1, (c - 1).bit_length())
    gs = _int(meta["group_size"], f"{name}.group_size", 1 if scheme == "group" else 0,
              numel if scheme == "group" else 0)
    expected = {"channel": {"bits"}, "group": {"bits"}}.get(scheme, set())
    if scheme == "channel":
        expected.add("exponents" if "exponents" in meta else "n_scales")
    if {"bits", "exponents", "n_scales"} & meta.keys() != expected:
        _fail(f"layer {name}: a {scheme} layer stores {sorted(expected)}")
    if "bits" in meta:
        side += _side_field(meta, "bits", c if scheme == "channel" else -(-numel // gs), name)
    if "exponents" in meta:
        side += _side_field(meta, "exponents", c, name)
    if "n_scales" in meta:
        side += 32 * _int(meta["n_scales"], f"{name}.n_scales", c, c)
    side += 64 if scheme == "group" else 0
    nbytes = _int(meta["nbytes"], f"{name}.nbytes")
    coding = meta.get("coding", "fixed" if version == 1 else None)
    if coding not in ("fixed", "ans") or (version == 1 and "coding" in meta) or (coding == "ans" and scheme == "float"):
        _fail(f"layer {name}: coding {str(coding)[:10]!r} is not allowed for a {scheme} layer in version {version}")
    if ("ans_words" in meta) != (coding == "ans"):
        _fail(f"layer {name}: ans_words is given exactly for ans-coded layers")
    words = _int(meta.get("ans_words", 0), f"{name}.ans_words")
    if side > 8 * nbytes:
        _fail(f"layer {name}: {side} bits of side information in a {nbytes}-byte stream")
    return {**meta, "shape": shape, "full_shape": full, "coding": coding, "ans_words": words}, nbytes + 4 * words


def check_header(header: object, version: int, body_bytes: int) -> Plan:
    """Validate ``header`` for a file whose layer streams, codebook and float tensors take ``body_bytes``."""
    header = _keys(header, _TOP, set(), "header")
    if header["format"] != FORMAT:
        _fail(f"format must be {FORMAT!r}")
    _int(header["version"], "version (as in the prelude)", version, version)
    spec = _arch(header["arch"])
    topo, full, other_full = _reference(spec)
    if header["topology"] != topo.as_dict():
        _fail(f"topology is not that of {spec.name}")
    if not isinstance(header["layers"], list) or len(header["layers"]) != len(topo.nodes):
        _fail(f"layers must list the {len(topo.nodes)} layers of {spec.name}")
    layers, nbytes = [], 0
    for meta, node in zip(header["layers"], topo.nodes):
        m, n = _layer(meta, node, full[node.name], version)
        layers.append(m)
        nbytes += n
    width = {}  # exported width of every space: all its producers must agree
    for m, node in zip(layers, topo.nodes):
        if width.setdefault(node.out_space, m["shape"][0]) != m["shape"][0] or (
                node.out_space == "logits" and m["shape"][0] != m["full_shape"][0]):
            _fail(f"layer {node.name}: {m['shape'][0]} output channels disagree with its space {node.out_space}")
    for m, node in zip(layers, topo.nodes):
        ins = m["full_shape"][1] if node.in_space not in width else width[node.in_space] * node.in_factor
        if m["shape"][1] != ins:
            _fail(f"layer {node.name}: {m['shape'][1]} inputs, its input space gives {ins}")
    k = _int(header["codebook_size"], "codebook_size", 0, 1 << 32)
    if k == 0 and any(m["scheme"] == "codebook" for m in layers):
        _fail("codebook layers without a codebook")
    others = _others(header["others"], other_full, topo, layers)
    nbytes += 4 * k + 4 * sum(math.prod(s) for _, s in others)
    if nbytes != body_bytes:
        _fail(f"streams, codebook and float tensors take {nbytes} bytes but the file holds {body_bytes}")
    return Plan(spec, topo, layers, k, others)


def _others(items: object, full: dict[str, tuple[int, ...]], topo: Topology,
            layers: list[dict]) -> list[tuple[str, tuple[int, ...]]]:
    """BatchNorm and bias tensors: the architecture's, in its order, shrunk with their layer's outputs."""
    if not isinstance(items, list) or len(items) != len(full):
        _fail(f"others must list the architecture's {len(full)} float tensors")
    channels = {}
    for m, node in zip(layers, topo.nodes):
        channels[node.name] = channels[node.bn or node.name] = m["shape"][0]
    out = []
    for item, (name, shape) in zip(items, full.items()):
        owner = name.rsplit(".", 1)[0]
        want = (channels[owner],) if owner in channels else shape
        if not isinstance(item, list) or len(item) != 2 or item[0] != name or _shape(item[1], name) != want:
            _fail(f"others: expected {name} of shape {list(want)}, found {str(item)[:80]}")
        out.append((name, want))
    return out
