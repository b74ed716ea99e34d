"""Where each data set comes from: official files, official URLs, and how to read them.

`load_splits(name, root, download, ...)` returns a `Splits` of uint8 images (N, C, H, W) and int64 labels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vrs.data.readers import read_cifar_batches, read_idx_split
from vrs.errors import VRSError, check_choice


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class Remote:
    """One official download: URL, md5 of the file, and the file name it is stored under."""

    url: str
    md5: str | None
    filename: str


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

REMOTES: dict[str, list[Remote]] = {
    "fashion_mnist": [Remote(f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}", None, f)
                      for f in IDX_FILES],
    "mnist": [Remote(f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}", None, f) for f in IDX_FILES],
    "cifar10": [Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz")],
    "cifar100": [Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz")],
}

# Folder names under a data root, and system-wide copies (Debian's dataset-fashion-mnist).
FOLDERS = {"fashion_mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar-10-batches-py",
           "cifar100": "cifar-100-python"}
SYSTEM_COPIES = {"fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")]}

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "digits", "synthetic")
# Images in each training split (before data.val_size is split off); synthetic: data.synthetic.num_train.
TRAIN_SIZES = {"fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000, "digits": 1497}


def _is_complete(name: str, folder: Path) -> bool:
    if name in ("fashion_mnist", "mnist"):
        return all((folder / f).is_file() or (folder / f[:-3]).is_file() for f in IDX_FILES)
    if name == "cifar10":
        return (folder / "test_batch").is_file()
    if name == "cifar100":
        return (folder / "test").is_file()
    return False


def candidate_folders(name: str, root: str | None, data_dir: str | None) -> list[Path]:
    """Folders searched for a data set, in order: <data_dir>/<folder> ($VRS_DATA_DIR's too), system copies; an
    explicit root is the only place searched (the root itself and <root>/<folder>): never replaced by another copy."""
    if root:
        return [Path(root), Path(root) / FOLDERS[name]]
    out: list[Path] = []
    for base in filter(None, [data_dir, os.environ.get("VRS_DATA_DIR")]):
        out.append(Path(base) / FOLDERS[name])
    out += SYSTEM_COPIES.get(name, [])
    return out


def locate(name: str, root: str | None, data_dir: str | None, download: bool) -> Path:
    """Find the data set's folder, downloading it into <root or data_dir> when allowed. An explicit data.root
    is never replaced by another copy: missing (without data.download) or without the data set, it is an
    error."""
    candidates = candidate_folders(name, root, data_dir)
    for folder in candidates:
        if _is_complete(name, folder):
            return folder
    if root and not download:
        where = Path(root)
        why = ("does not exist" if not where.exists() else "is not a directory" if not where.is_dir()
               else f"holds no {name} files (searched {where} and {where / FOLDERS[name]})")
        raise VRSError(f"data.root={root!r} {why}, and data.download=false: pass the folder that holds the "
                       f"official files, data.root=null to search {data_dir or 'data.data_dir'} and the system "
                       "copies, or data.download=true to download into it")
    if not download:
        raise VRSError(f"data set {name} not found in any of {[str(c) for c in candidates]} and "
                       f"data.download=false: pass data.root=<folder with the official files> or data.download=true")
    target_base = Path(root) if root else Path(data_dir or "data")
    return download_official(name, target_base)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(remote: Remote, folder: Path, timeout: float = 60.0) -> Path:
    """Download one file into folder atomically (temp file + rename) and check its md5 when known."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    if dest.is_file() and (remote.md5 is None or _md5(dest) == remote.md5):
        return dest
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        if remote.md5 is not None and _md5(Path(tmp)) != remote.md5:
            raise VRSError(f"download of {remote.url} is corrupt (md5 mismatch)")
        os.replace(tmp, dest)
    except OSError as err:
        raise VRSError(f"cannot download {remote.url}: {err}. Put the official files in a folder and pass "
                       f"data.root=<folder>") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def download_official(name: str, base: Path) -> Path:
    """Download a data set's official files under base and return its folder."""
    check_choice("data.name", name, REMOTES)
    folder = base / FOLDERS[name]
    if name in ("fashion_mnist", "mnist"):
        for remote in REMOTES[name]:
            fetch(remote, folder)
    else:
        archive = fetch(REMOTES[name][0], base)
        with tarfile.open(archive) as tar:
            tar.extractall(base, filter="data")
    if not _is_complete(name, folder):
        raise VRSError(f"download of {name} into {folder} is incomplete")
    return folder


def _digits(seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16), a fixed seeded 1,497/300 split."""
    from sklearn.datasets import load_digits  # deferred: only data=digits needs scikit-learn

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(labels))
    tr, te = perm[:1497], perm[1497:]
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    return Splits(x[tr], y[tr], x[te], y[te])


def synthetic(num_train: int, num_test: int, channels: int, size: int, num_classes: int, seed: int) -> Splits:
    """Learnable synthetic images: one smooth random template per class plus pixel noise, seeded."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = templates[y] + 0.15 * torch.randn(n, channels, size, size, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    return Splits(*draw(num_train), *draw(num_test))


def load_splits(name: str, root: str | None = None, data_dir: str | None = None, download: bool = False,
                synthetic_args: dict | None = None) -> Splits:
    """Load the train and test splits of a data set by name."""
    check_choice("data.name", name, DATASETS)
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return synthetic(**(synthetic_args or {}))
    folder = locate(name, root, data_dir, download)
    if name in ("fashion_mnist", "mnist"):
        return Splits(*read_idx_split(folder, "train"), *read_idx_split(folder, "t10k"))
    if name == "cifar10":
        train = read_cifar_batches(folder, [f"data_batch_{i}" for i in range(1, 6)], "labels")
        return Splits(*train, *read_cifar_batches(folder, ["test_batch"], "labels"))
    train = read_cifar_batches(folder, ["train"], "fine_labels")
    return Splits(*train, *read_cifar_batches(folder, ["test"], "fine_labels"))
