import os
import pickle
import re

import numpy as np
import pytest
import torch

from benchmarks.data import DataError, augment, batches, load_cifar10, load_dataset, make_synthetic, resolve_root


def write_fake_cifar(root, n=20, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n)),
             "batch_label": name, "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    return folder


def test_reads_torchvision_layout_without_checksums(tmp_path):
    write_fake_cifar(tmp_path)
    ds = load_cifar10(tmp_path, download=False)
    assert ds.train.images.shape == (100, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (20, 3, 32, 32) and ds.test.labels.dtype == torch.int64
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert torch.equal(ds.train.images[0].flatten(), torch.from_numpy(raw["data"][0]))


@pytest.mark.parametrize("field, value, message", [
    ("labels", list(range(10)) * 3, "holds (20, 3072) images and (30,) labels"),
    ("data", np.zeros((20, 100), np.uint8), "holds (20, 100) images"),
    ("labels", [11] * 20, "labels outside 0..9"),
])
def test_inconsistent_batch_file_is_refused_at_load(tmp_path, field, value, message):
    folder = write_fake_cifar(tmp_path)
    with open(folder / "data_batch_3", "rb") as f:
        d = pickle.load(f)
    d[field] = value
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(DataError, match=f"data_batch_3 {re.escape(message)}" if "holds" in message else message):
        load_cifar10(tmp_path, download=False)


def test_batch_file_cannot_execute_code(tmp_path):
    folder = write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar10(tmp_path, download=False)
    assert not marker.exists()


def test_missing_folder_gives_clear_error(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 not found in .*--data-dir"):
        load_cifar10(tmp_path / "nowhere", download=False)


def test_unreadable_batch_gives_clear_error(tmp_path):
    folder = write_fake_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable"):
        load_cifar10(tmp_path, download=False)


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SCNN_DATA", str(tmp_path))
    assert resolve_root(None) == tmp_path
    assert str(resolve_root("x")) == "x"
    monkeypatch.delenv("SCNN_DATA")
    assert str(resolve_root(None)) == "data"


def test_augment_crops_and_flips_batched():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert not torch.equal(out, x)


def test_batches_cover_the_split_and_are_normalised():
    ds = make_synthetic(n_train=256, n_test=100)
    xs = list(batches(ds.test, 32, torch.Generator(), train=False))
    assert sum(len(y) for _, y in xs) == 100
    x, _ = next(iter(batches(ds.train, 64, torch.Generator(), train=True)))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 1.5


def test_load_dataset_rejects_unknown_name():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
