"""Readers for the official file formats: IDX (MNIST, Fashion-MNIST) and CIFAR's python pickles.

Each reader returns (images uint8 (N, C, H, W), labels int64 (N,)) as torch tensors, and raises a
VRSError naming the file when it is missing or malformed.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from vrs.errors import VRSError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes are used by these data sets.
_IDX_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its declared shape."""
    path = Path(path)
    if not path.is_file():
        raise VRSError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise VRSError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise VRSError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _IDX_UBYTE:
        raise VRSError(f"{path}: IDX type 0x{dtype_code:02x} not supported (expected unsigned byte 0x08)")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise VRSError(f"{path}: expected {count} bytes of data for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(root: str | Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]` from root."""
    root = Path(root)
    files = {}
    for kind, suffix in (("images", "idx3-ubyte"), ("labels", "idx1-ubyte")):
        candidates = [root / f"{prefix}-{kind}-{suffix}.gz", root / f"{prefix}-{kind}-{suffix}"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise VRSError(f"missing {candidates[0].name} in {root}")
        files[kind] = found
    images, labels = read_idx(files["images"]), read_idx(files["labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise VRSError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def read_cifar_batches(folder: str | Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR python pickles (dicts with b'data' (N, 3072) uint8 and a label list) and stack them."""
    folder = Path(folder)
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise VRSError(f"missing CIFAR batch file {path}")
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            label = np.asarray(batch[label_key.encode()], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError) as err:
            raise VRSError(f"{path} is not a CIFAR python batch: {err!r}") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(label):
            raise VRSError(f"{path}: data {data.shape} / labels {label.shape} are not CIFAR-shaped")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
