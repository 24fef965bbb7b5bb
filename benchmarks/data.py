"""CIFAR-10 (or a learnable synthetic stand-in) held whole as uint8 tensors on the training device.

Batches are normalised and augmented on tensors (random crop with reflect padding, horizontal flip): no
per-image PIL work and no DataLoader workers, which on a 2-core machine cost more than the network does.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]


class DataError(RuntimeError):
    """The data set could not be found or read; the message says where we looked and how to fix it."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x 3 x 32 x 32, on the training device
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int = 10

    @property
    def fingerprint(self) -> str:
        """A hash of the content (images and labels of both splits), never of a path: two copies that
        differ in one pixel give different run ids and different float-model caches."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256(f"{self.name}:{self.num_classes}".encode())
            for t in (self.train.images, self.train.labels, self.test.images, self.test.labels):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def resolve_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``--data-dir``, else ``$SCNN_DATA``, else ``./data``."""
    return Path(data_dir or os.environ.get("SCNN_DATA") or "data")


class _PlainData(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a batch file can hold nothing that executes."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy{core}.multiarray", f) for core in ("._core", ".core") for f in ("_reconstruct", "scalar"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: batch files hold plain data only")
        return super().find_class(module, name)


def _read_batches(folder: Path, files: list[str]) -> Split:
    xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            d = _PlainData(fh, encoding="latin1").load()
        x = np.asarray(d["data"], dtype=np.uint8)
        y = np.asarray(d["labels"], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{f} holds {x.shape} images and {y.shape} labels; a CIFAR-10 batch holds N x 3072 "
                             f"images and N labels")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{f} has labels outside 0..9 ({y.min()}..{y.max()})")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Read the torchvision-layout pickles directly (checksums are not required to match); download if absent
    (unless ``SCNN_OFFLINE`` is set, for machines without a network)."""
    root = resolve_root(data_dir)
    folder = root / FOLDER
    if not folder.is_dir() and download and not os.environ.get("SCNN_OFFLINE"):
        try:
            from torchvision.datasets import CIFAR10

            log.info("CIFAR-10 not found in %s; downloading through torchvision", folder)
            CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # network down, unwritable root, ...
            raise DataError(f"CIFAR-10 not found in {folder.resolve()} and the download failed ({e}); "
                            f"put the torchvision-layout '{FOLDER}' folder there or pass --data-dir / "
                            f"set SCNN_DATA to the folder that contains it") from None
    missing = [f for f in TRAIN_FILES + TEST_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 not found in {folder.resolve()} (missing {', '.join(missing)}); pass "
                        f"--data-dir / set SCNN_DATA to the folder that contains '{FOLDER}'")
    try:
        return Dataset("cifar10", _read_batches(folder, TRAIN_FILES), _read_batches(folder, TEST_FILES))
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        raise DataError(f"CIFAR-10 in {folder.resolve()} is unreadable ({type(e).__name__}: {e}); "
                        f"replace the folder with a fresh copy") from None


def make_synthetic(n_train: int = 2048, n_test: int = 512, num_classes: int = 10, seed: int = 0) -> Dataset:
    """Images of class-dependent smooth colour patterns under per-image contrast changes and noise.

    Learnable by a small CNN within an epoch or two, yet not trivially separable pixel by pixel, so that
    compression can visibly cost accuracy.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=32,
                                             mode="bilinear", align_corners=False)

    def split(n: int) -> Split:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        contrast = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
        x = contrast * protos[y] + (1 - contrast) * torch.rand(n, 3, 32, 32, generator=g)
        return Split((x * 255).round().clamp(0, 255).to(torch.uint8), y)

    return Dataset("synthetic", split(n_train), split(n_test), num_classes)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> Dataset:
    if name == "cifar10":
        ds = load_cifar10(data_dir)
    elif name == "synthetic":
        ds = make_synthetic()
    else:
        raise DataError(f"unknown dataset {name!r}; choose cifar10 or synthetic")
    for s in (ds.train, ds.test):
        s.images, s.labels = s.images.to(device), s.labels.to(device)
    return ds


def normalize(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device).view(1, 3, 1, 1)
    out = (x.float() / 255 - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after reflect padding and random horizontal flip, for a whole uint8 batch at once."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x.float(), (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.to(torch.uint8)


def batches(split: Split, batch_size: int, generator: torch.Generator, train: bool,
            channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented, normalised batches for training; the plain test set in order otherwise."""
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.labels.device) if train else None
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size] if train else slice(i, i + batch_size)
        if train and len(order[i:i + batch_size]) < batch_size // 2:
            break  # a tiny last batch only adds BatchNorm noise
        x = split.images[idx]
        if train:
            x = augment(x, generator)
        yield normalize(x, channels_last), split.labels[idx]
