"""Data: the official-format readers (on the installed Fashion-MNIST and on small files written here in
the official layouts), downloads from file:// URLs, the data module's split, loaders and augmentation."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FASHION_MNIST_DIR
from vrs.data import sources
from vrs.data.datamodule import ImageDataModule, TensorBatches, random_crop_flip, to_float
from vrs.data.readers import read_cifar_batches, read_idx, read_idx_split
from vrs.data.sources import Remote, download_official, load_splits, locate
from vrs.errors import ConfigError, VRSError


# ---- IDX (MNIST, Fashion-MNIST) ------------------------------------------------------------------
def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Serialise a uint8 array in the IDX format: magic 0 0 type ndim, big-endian dims, raw data."""
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True, type_code: int = 0x08) -> Path:
    data = idx_bytes(np.ascontiguousarray(array, dtype=np.uint8), type_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist_folder(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0):
    """MNIST-layout folder (train-/t10k- images idx3 + labels idx1); returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST not installed (Debian dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    s = load_splits("fashion_mnist", download=False)  # found at the system copy
    assert s.train_x.shape == (60_000, 1, 28, 28) and s.test_x.shape == (10_000, 1, 28, 28)
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert torch.equal(torch.bincount(s.train_y), torch.full((10,), 6_000))
    assert torch.equal(torch.bincount(s.test_y), torch.full((10,), 1_000))
    # real images, not blank: dark background, bright garments, mean pixel close to the config's mean
    assert int(s.train_x.min()) == 0 and int(s.train_x.max()) == 255
    assert abs(float(s.train_x[:5000].float().mean() / 255) - 0.2860) < 0.01
    assert locate("fashion_mnist", None, "/nonexistent", download=False) == FASHION_MNIST_DIR


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    written = write_mnist_folder(tmp_path / "mnist", gz=gz)
    x, y = read_idx_split(tmp_path / "mnist", "train")
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), written["train"][0]) and np.array_equal(y.numpy(), written["train"][1])
    s = load_splits("mnist", root=str(tmp_path), download=False)  # <root>/mnist is searched too
    assert (len(s.train_y), len(s.test_y)) == (60, 20)
    assert np.array_equal(s.test_x[:, 0].numpy(), written["t10k"][0])


def test_idx_corrupt_and_truncated(tmp_path):
    good = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    raw = idx_bytes(good)
    cases = {
        "bad_magic.gz": (b"\x08\x03" + raw[2:], "bad magic"),
        "short.gz": (raw[:3], "bad magic"),
        "int32.gz": (idx_bytes(good, type_code=0x0C), "not supported"),
        "truncated_data.gz": (raw[:-10], "expected 1568 bytes"),
        "extra_data.gz": (raw + b"\x00", "expected 1568 bytes"),
    }
    for name, (data, message) in cases.items():
        with gzip.open(tmp_path / name, "wb") as fh:
            fh.write(data)
        with pytest.raises(VRSError, match=message):
            read_idx(tmp_path / name)
    # a gzip stream cut short, and a file that is not gzip at all
    full = gzip.compress(raw)
    (tmp_path / "cut.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(VRSError, match="cannot read IDX file .*cut.gz"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "notgz.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(VRSError, match="cannot read IDX file"):
        read_idx(tmp_path / "notgz.gz")
    with pytest.raises(VRSError, match="IDX file not found"):
        read_idx(tmp_path / "absent.gz")


def test_idx_split_mismatch_and_missing(tmp_path):
    folder = tmp_path / "m"
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(VRSError, match="missing train-labels-idx1-ubyte.gz"):
        read_idx_split(folder, "train")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(VRSError, match="do not match"):
        read_idx_split(folder, "train")


# ---- CIFAR python pickles ------------------------------------------------------------------------
def cifar_batch(n: int, label_key: str, rng: np.random.Generator, num_classes: int) -> tuple[dict, np.ndarray]:
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    batch = {b"batch_label": b"testing batch", b"data": images.reshape(n, 3072), b"filenames": [b"x.png"] * n,
             label_key.encode(): labels}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    return batch, images


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # the official files are Python 2 pickles


def write_cifar10(root: Path, per_batch: int = 8, n_test: int = 6) -> dict[str, np.ndarray]:
    rng, folder = np.random.default_rng(1), root / "cifar-10-batches-py"
    train_x, train_y = [], []
    for i in range(1, 6):
        batch, images = cifar_batch(per_batch, "labels", rng, 10)
        write_pickle(folder / f"data_batch_{i}", batch)
        train_x.append(images)
        train_y += batch[b"labels"]
    test, test_x = cifar_batch(n_test, "labels", rng, 10)
    write_pickle(folder / "test_batch", test)
    write_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
    return {"train_x": np.concatenate(train_x), "train_y": np.array(train_y), "test_x": test_x,
            "test_y": np.array(test[b"labels"])}


def write_cifar100(root: Path, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng, folder = np.random.default_rng(2), root / "cifar-100-python"
    train, train_x = cifar_batch(n_train, "fine_labels", rng, 100)
    test, test_x = cifar_batch(n_test, "fine_labels", rng, 100)
    write_pickle(folder / "train", train)
    write_pickle(folder / "test", test)
    return {"train_x": train_x, "train_y": np.array(train[b"fine_labels"]), "test_x": test_x,
            "test_y": np.array(test[b"fine_labels"])}


def test_cifar10_reader(tmp_path):
    want = write_cifar10(tmp_path)
    s = load_splits("cifar10", root=str(tmp_path), download=False)
    assert s.train_x.shape == (40, 3, 32, 32) and s.test_x.shape == (6, 3, 32, 32)
    assert np.array_equal(s.train_x.numpy(), want["train_x"])  # batches 1..5 in order, channel-major pixels
    assert np.array_equal(s.train_y.numpy(), want["train_y"]) and np.array_equal(s.test_y.numpy(), want["test_y"])
    # pixel (c, h, w) is data[c * 1024 + h * 32 + w] in the official row layout
    row = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")[b"data"][0]
    assert s.train_x[0, 2, 5, 7] == row[2 * 1024 + 5 * 32 + 7]
    # the folder itself also works as data.root
    assert len(load_splits("cifar10", root=str(tmp_path / "cifar-10-batches-py")).test_y) == 6


def test_cifar100_reader_uses_fine_labels(tmp_path):
    want = write_cifar100(tmp_path)
    s = load_splits("cifar100", root=str(tmp_path), download=False)
    assert s.train_x.shape == (30, 3, 32, 32) and s.test_x.shape == (10, 3, 32, 32)
    assert np.array_equal(s.train_y.numpy(), want["train_y"]) and np.array_equal(s.test_x.numpy(), want["test_x"])
    assert int(s.train_y.max()) > 19  # fine labels (0..99), not the 20 coarse ones


def test_cifar_bad_files(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(VRSError, match="missing CIFAR batch file .*data_batch_3"):
        load_splits("cifar10", root=str(tmp_path))
    (folder / "data_batch_3").write_bytes(b"garbage, not a pickle")
    with pytest.raises(VRSError, match="data_batch_3 is not a CIFAR python batch"):
        load_splits("cifar10", root=str(tmp_path))
    full = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_3").write_bytes(full[: len(full) // 2])  # truncated
    with pytest.raises(VRSError, match="data_batch_3 is not a CIFAR python batch"):
        load_splits("cifar10", root=str(tmp_path))
    write_pickle(folder / "data_batch_3", {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})
    with pytest.raises(VRSError, match="not CIFAR-shaped"):
        read_cifar_batches(folder, ["data_batch_3"], "labels")
    write_pickle(folder / "data_batch_3", {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0] * 4})
    with pytest.raises(VRSError, match="not a CIFAR python batch"):  # CIFAR-100 file where CIFAR-10 is expected
        read_cifar_batches(folder, ["data_batch_3"], "labels")


def test_missing_data_without_download(tmp_path):
    with pytest.raises(VRSError, match=r"data set cifar10 not found .* data.download=false"):
        load_splits("cifar10", data_dir=str(tmp_path), download=False)


# ---- downloads (official layout, served from file:// URLs) ---------------------------------------
def test_download_idx_and_cifar_archives(tmp_path, monkeypatch):
    src = tmp_path / "server"
    written = write_mnist_folder(src / "mnist", n_train=30, n_test=10)
    remotes = [Remote((src / "mnist" / f).as_uri(), None, f) for f in sources.IDX_FILES]
    write_cifar10(src / "c10")
    archive = src / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "c10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.REMOTES, "mnist", remotes)
    monkeypatch.setitem(sources.REMOTES, "cifar10", [Remote(archive.as_uri(), md5, archive.name)])

    base = tmp_path / "data"
    s = load_splits("mnist", data_dir=str(base), download=True)
    assert (base / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert np.array_equal(s.train_x[:, 0].numpy(), written["train"][0])
    s = load_splits("cifar10", data_dir=str(base), download=True)
    assert s.train_x.shape == (40, 3, 32, 32) and (base / "cifar-10-batches-py" / "test_batch").is_file()
    assert not list(base.rglob(".part-*"))  # no temporary files left behind

    monkeypatch.setitem(sources.REMOTES, "cifar10", [Remote(archive.as_uri(), "0" * 32, "other.tar.gz")])
    with pytest.raises(VRSError, match="corrupt"):
        download_official("cifar10", tmp_path / "data2")
    monkeypatch.setitem(sources.REMOTES, "cifar10", [Remote((src / "absent.tar.gz").as_uri(), None, "a.tar.gz")])
    with pytest.raises(VRSError, match="cannot download .* data.root=<folder>"):
        download_official("cifar10", tmp_path / "data3")
    assert not list((tmp_path / "data2").rglob(".part-*")) and not list((tmp_path / "data3").rglob(".part-*"))


# ---- digits, synthetic ---------------------------------------------------------------------------
def test_digits():
    s = load_splits("digits")
    assert (len(s.train_y), len(s.test_y)) == (1497, 300) and s.train_x.shape[1:] == (1, 8, 8)
    assert set(s.train_y.tolist()) == set(range(10)) and int(s.train_x.max()) == 255
    assert torch.equal(load_splits("digits").test_x, s.test_x)  # fixed split


def test_synthetic_shape_seed_and_classes():
    args = dict(num_train=300, num_test=50, channels=3, size=12, num_classes=4)
    a, b = sources.synthetic(**args, seed=1), sources.synthetic(**args, seed=1)
    assert a.train_x.shape == (300, 3, 12, 12) and a.test_x.shape == (50, 3, 12, 12)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, sources.synthetic(**args, seed=2).train_x)
    # learnable: a nearest-class-mean classifier fit on train is far above chance on test
    x, y = a.train_x.float().flatten(1), a.train_y
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    pred = torch.cdist(a.test_x.float().flatten(1), means).argmin(1)
    assert (pred == a.test_y).float().mean() > 0.9


# ---- data module ---------------------------------------------------------------------------------
def digits_dm(**kw) -> ImageDataModule:
    args = dict(name="digits", channels=1, size=8, num_classes=10, mean=[0.3], std=[0.4], val_size=200,
                batch_size=64, eval_batch_size=128, seed=0)
    args.update(kw)
    dm = ImageDataModule(**args)
    dm.setup()
    return dm


def test_seeded_train_val_split():
    a, b, c = digits_dm(seed=3), digits_dm(seed=3), digits_dm(seed=4)
    assert len(a.splits["val"][1]) == 200 and len(a.splits["train"][1]) == 1297 and len(a.splits["test"][1]) == 300
    assert torch.equal(a.splits["val"][0], b.splits["val"][0]) and torch.equal(a.splits["train"][1], b.splits["train"][1])
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])
    # train and val are disjoint and together the whole training split
    full = load_splits("digits").train_x.flatten(1)
    keys = lambda x: {bytes(row.numpy()) for row in x.flatten(1)}  # noqa: E731
    tr, va = keys(a.splits["train"][0]), keys(a.splits["val"][0])
    assert not tr & va and tr | va == keys(full)
    sub = digits_dm(seed=3, train_subset=100, test_subset=50)
    assert len(sub.splits["train"][1]) == 100 and len(sub.splits["test"][1]) == 50
    assert torch.equal(sub.splits["val"][0], a.splits["val"][0])  # subsetting train leaves val alone


def test_device_loader_batches():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    epoch = {"e": 0}
    tb = TensorBatches(x, y, batch_size=4, shuffle=True, seed=7, epoch_fn=lambda: epoch["e"])
    assert len(tb) == 3
    batches = list(tb)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    order0 = torch.cat([b[1] for b in batches])
    assert sorted(order0.tolist()) == list(range(10))  # each image once per epoch
    assert all(torch.equal(bx[:, 0, 0, 0].long(), by) for bx, by in batches)  # images stay with their labels
    assert torch.equal(torch.cat([b[1] for b in tb]), order0)  # same epoch, same order (resume-safe)
    epoch["e"] = 1
    assert not torch.equal(torch.cat([b[1] for b in tb]), order0)  # a new order each epoch
    assert len(TensorBatches(x, y, 4, shuffle=True, seed=7, drop_last=True)) == 2
    ordered = torch.cat([b[1] for b in TensorBatches(x, y, 3, shuffle=False, seed=0)])
    assert torch.equal(ordered, y)
    # DDP: ranks get disjoint, equally long shares of the same permutation
    ranks = [torch.cat([b[1] for b in TensorBatches(x, y, 2, True, 7, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and not set(ranks[0].tolist()) & set(ranks[1].tolist())


def test_datamodule_loaders(tmp_path):
    dm = digits_dm()
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [64] * 20 + [17]
    assert batches[0][0].dtype == torch.uint8 and batches[0][0].shape[1:] == (1, 8, 8)
    assert len(list(dm.val_dataloader())) == 2 and sum(len(b[1]) for b in dm.test_dataloader()) == 300
    torch_dm = digits_dm(loader="torch")
    loader = torch_dm.train_dataloader()
    assert isinstance(loader, torch.utils.data.DataLoader) and len(loader) == 21
    assert sum(len(b[1]) for b in loader) == 1297


def test_random_crop_flip_keeps_shape_and_values():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 10, 10) + 0.5  # strictly positive, so padding zeros are recognisable
    out = random_crop_flip(x, padding=2, hflip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(len(x)):  # each output is one crop of the padded input, maybe flipped
        match = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 10, dx:dx + 10]))]
        assert match, f"sample {i} is not a crop/flip of its input"
        seen.add(match[0])
    assert len(seen) > 10  # offsets and flips really vary per sample
    assert torch.equal(random_crop_flip(x, 0, False), x)
    flipped = random_crop_flip(x, 0, True)
    n_flipped = sum(torch.equal(flipped[i], x[i].flip(-1)) for i in range(len(x)))
    assert all(torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1)) for i in range(len(x)))
    assert 10 < n_flipped < 54


def test_batch_transfer_to_float_and_train_only_augmentation():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    f = to_float(x)
    assert f.dtype == torch.float32 and torch.allclose(f * 255, x.float()) and 0 <= f.min() and f.max() <= 1
    dm = ImageDataModule(name="synthetic", channels=3, size=6, num_classes=2, mean=[0.5] * 3, std=[0.25] * 3,
                         crop_padding=2, hflip=True, synthetic={"num_train": 10, "num_test": 4, "seed": 0})
    out, y = dm.on_after_batch_transfer((x, torch.zeros(8)), 0)  # no trainer: not training, no augmentation
    assert torch.equal(out, f)

    class FakeTrainer:
        training = True

    dm.trainer = FakeTrainer()
    torch.manual_seed(1)
    out, _ = dm.on_after_batch_transfer((x, torch.zeros(8)), 0)
    assert out.shape == f.shape and not torch.equal(out, f)
    assert set(out.unique().tolist()) <= set(f.unique().tolist()) | {0.0}


def test_datamodule_rejects_bad_config():
    with pytest.raises(ConfigError, match="data.name='imagenet' is not allowed: one of fashion_mnist"):
        ImageDataModule(name="imagenet", channels=3, size=32, num_classes=10, mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(ConfigError, match=r"data.mean/data.std"):
        ImageDataModule(name="digits", channels=1, size=8, num_classes=10, mean=[0.3, 0.3], std=[0.4])


def test_an_explicit_root_is_never_replaced(tmp_path):
    """data.root names the one place to read from: missing, a file or without the data set (and
    data.download=false) it is an error, even where a system copy of the data set exists."""
    with pytest.raises(VRSError, match=r"data.root='.*missing' does not exist, and data.download=false"):
        locate("fashion_mnist", str(tmp_path / "missing"), None, download=False)
    with pytest.raises(VRSError, match=r"holds no fashion_mnist files \(searched"):
        locate("fashion_mnist", str(tmp_path), None, download=False)
    assert sources.candidate_folders("fashion_mnist", str(tmp_path), "/data") == [tmp_path, tmp_path / "fashion-mnist"]
    with pytest.raises(VRSError, match=r"data.root='.*missing' is not allowed: an existing directory"):
        ImageDataModule("mnist", 1, 28, 10, [0.1], [0.3], root=str(tmp_path / "missing"), download=False)
