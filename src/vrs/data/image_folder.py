"""Image folders in the standard class-folder layout, read with Pillow: ImageNet as every randomized-smoothing
anchor reads it (torchvision's ImageFolder, which this project does not use).

    <root>/train/<class>/<image>      e.g. train/n01440764/n01440764_10026.JPEG
    <root>/val/<class>/<image>        val/ sorted into the same class folders (e.g. with soumith's valprep.sh)

Classes are the sorted folder names of train/ (of val/ when there is no train/), label = position, so labels
agree between the splits and with the anchors'; images are listed per class in sorted file-name order, so
`certify.skip=100` picks the images Cohen et al.'s `--skip 100` picked. An optional file list (one path per line,
relative to the split folder: `<class>/<file>`) selects a subset, in its own order, with the labels of the whole
tree.

Transforms (those of the anchors' code/datasets.py, torchvision's conventions): test images are resized so the
shorter side is `resize` (256; bilinear, the longer side truncated to an integer) and center-cropped to `size`
(224); training images get a random-resized crop (area 8%-100% of the image, aspect ratio 3/4-4/3, ten tries then
the centre) resized to `size`, and a random horizontal flip. Images stay uint8 (C, H, W) until the batch is on
the device, where they become [0, 1] floats: noise is added there, the network normalises (vrs.models.normalize).

Images are decoded on demand: `FolderImages` behaves like the uint8 image tensor of the other data sets for
indexing (x[i], x[list], x[tensor], x[a:b]) and `.shape`, so vrs-certify and vrs-attack read ImageNet as they read
CIFAR-10; training goes through a DataLoader with worker processes (data.num_workers), whose random crops draw
from torch's generator (seeded per worker and epoch by the DataLoader, from the run's seed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vrs.data.datamodule import DataSpec, SplitLoaders, to_float
from vrs.errors import VRSError, check

# The file types torchvision's ImageFolder takes (its IMG_EXTENSIONS), compared case-insensitively.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SCALE = (0.08, 1.0)           # random-resized crop: fraction of the image's area
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # random-resized crop: width / height
ATTEMPTS = 10


# ---- transforms (Pillow) -------------------------------------------------------------------------------------
def resize_shorter(img, size: int):
    """The image with its shorter side `size` (bilinear), the longer one int(size * long / short); unchanged when
    the shorter side is `size` already."""
    from PIL import Image  # deferred: only image folders need Pillow

    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img.resize(new, Image.BILINEAR)


def center_crop(img, size: int):
    """The central size x size crop (offsets rounded as torchvision rounds them)."""
    w, h = img.size
    check(w >= size and h >= size, "data.size", size, f"at most the resized image ({w}x{h})")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def random_resized_crop_box(width: int, height: int, scale: Sequence[float] = SCALE, ratio: Sequence[float] = RATIO,
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of a random-resized crop: an area fraction uniform in `scale` and a
    log-uniform aspect ratio in `ratio`, ten tries; else the central crop of the closest allowed ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(ATTEMPTS):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class ResizeCenterCrop:
    """Resize the shorter side to `resize`, center-crop `size`."""

    def __init__(self, size: int, resize: int):
        self.size, self.resize = size, resize

    def __call__(self, img):
        return center_crop(resize_shorter(img, self.resize), self.size)


class RandomResizedCropFlip:
    """Random-resized crop to `size` x `size` (bilinear), then a horizontal flip with probability 1/2."""

    def __init__(self, size: int, hflip: bool = True, scale: Sequence[float] = SCALE):
        self.size, self.hflip, self.scale = size, hflip, tuple(scale)

    def __call__(self, img):
        from PIL import Image  # deferred: only image folders need Pillow

        left, top, w, h = random_resized_crop_box(*img.size, scale=self.scale)
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
        if self.hflip and float(torch.rand(1)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img


# ---- the folder tree -----------------------------------------------------------------------------------------
def class_folders(folder: Path) -> list[str]:
    """The sorted names of the class folders in `folder` (hidden ones left out)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def list_images(folder: Path, classes: list[str], file_list: str | Path | None = None,
                key: str = "data.test_list") -> tuple[list[Path], torch.Tensor]:
    """(image paths, labels) of a split folder: every image of every class folder (sorted), or the images named
    in `file_list` (in its order). VRSError for a listed file that is missing or outside the classes."""
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    if file_list is None:
        for name in class_folders(folder):
            if name not in index:
                raise VRSError(f"{folder}/{name} is not a class of the training folder ({len(classes)} classes): the "
                               "splits must share their class folders")
            files = sorted(e.name for e in os.scandir(folder / name)
                           if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
            paths += [folder / name / f for f in files]
            labels += [index[name]] * len(files)
    else:
        listed = Path(file_list)
        if not listed.is_file():
            raise VRSError(f"{key}={str(file_list)!r} is not a file (a list of image paths relative to {folder})")
        for n, line in enumerate(listed.read_text().splitlines(), start=1):
            rel = line.split("#", 1)[0].strip()
            if not rel:
                continue
            cls = Path(rel).parts[0]
            if cls not in index or len(Path(rel).parts) != 2:
                raise VRSError(f"{listed}, line {n}: {rel!r} is not <class folder>/<image> of one of the "
                               f"{len(classes)} classes")
            if not (folder / rel).is_file():
                raise VRSError(f"{listed}, line {n}: {folder / rel} does not exist")
            paths.append(folder / rel)
            labels.append(index[cls])
    if not paths:
        raise VRSError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class folders"
                       + (f" listed in {file_list}" if file_list else ""))
    return paths, torch.tensor(labels, dtype=torch.int64)


def load_image(path: Path, channels: int, transform) -> torch.Tensor:
    """One image as uint8 (C, H, W) after `transform`; VRSError naming the file when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError  # deferred: only image folders need Pillow

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise VRSError(f"cannot read image {path}: {err}") from None
    array = np.asarray(transform(img), dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class FolderImages:
    """Images decoded on demand, indexed like a uint8 (N, C, size, size) tensor."""

    def __init__(self, paths: list[Path], channels: int, size: int, transform):
        self.paths, self.channels, self.size, self.transform = list(paths), channels, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.size, self.size)

    def image(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.channels, self.transform)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            return self.image(int(index))
        if isinstance(index, slice):
            positions = range(len(self.paths))[index]
        else:
            positions = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        if not positions:
            return torch.empty(0, self.channels, self.size, self.size, dtype=torch.uint8)
        return torch.stack([self.image(i) for i in positions])


class _Split(Dataset):
    """(image, label[, position]) of one split for a DataLoader."""

    def __init__(self, images: FolderImages, labels: torch.Tensor, with_index: bool = False):
        self.images, self.labels, self.with_index = images, labels, with_index

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        out = (self.images.image(i), self.labels[i])
        return (*out, i) if self.with_index else out


class _Splits(dict):
    def __init__(self, *args, missing: str = ""):
        super().__init__(*args)
        self.missing = missing

    def __missing__(self, key):
        raise VRSError(f"no {key} split: {self.missing}")


class ImageFolderDataModule(SplitLoaders):
    """train (train/ less `val_size` held-out images), val (those, with the test transform) and test (val/)."""

    def __init__(self, name: str, channels: int, size: int, num_classes: int, mean: list[float], std: list[float],
                 root: str | None = None, data_dir: str | None = None, train_dir: str = "train",
                 test_dir: str = "val", train_list: str | None = None, test_list: str | None = None,
                 resize: int = 256, val_size: int = 0, train_subset: int | None = None,
                 test_subset: int | None = None, batch_size: int = 256, eval_batch_size: int = 256,
                 hflip: bool = True, num_workers: int = 8, seed: int = 0):
        super().__init__()
        for key, val in (("data.channels", channels), ("data.size", size), ("data.num_classes", num_classes),
                         ("data.resize", resize), ("data.batch_size", batch_size),
                         ("data.eval_batch_size", eval_batch_size)):
            check(isinstance(val, int) and not isinstance(val, bool) and val > 0, key, val, "a positive integer")
        check(channels in (1, 3), "data.channels", channels, "1 (grey) or 3 (RGB)")
        check(resize >= size, "data.resize", resize, f"at least data.size ({size}): the test crop is cut from it")
        check(len(mean) == channels and len(std) == channels, "data.mean/data.std", (mean, std),
              f"one value per channel ({channels})")
        check(all(s > 0 for s in std), "data.std", std, "positive values")
        check(isinstance(val_size, int) and val_size >= 0, "data.val_size", val_size, "an integer >= 0")
        check(isinstance(num_workers, int) and num_workers >= 0, "data.num_workers", num_workers, "an integer >= 0")
        if root:  # checked before the run starts (vrs.config_schema)
            check(Path(root).is_dir(), "data.root", root, f"an existing directory holding {train_dir}/ and/or "
                  f"{test_dir}/ class folders ({'it is a file' if Path(root).exists() else 'it does not exist'})")
        for key, listed in (("data.train_list", train_list), ("data.test_list", test_list)):
            if listed:
                check(Path(listed).is_file(), key, listed, "an existing text file of <class>/<image> paths")
        self.spec = DataSpec(name, channels, size, num_classes, list(mean), list(std))
        self.root, self.data_dir, self.train_dir, self.test_dir = root, data_dir, train_dir, test_dir
        self.train_list, self.test_list, self.resize = train_list, test_list, resize
        self.val_size, self.train_subset, self.test_subset = val_size, train_subset, test_subset
        self.batch_size, self.eval_batch_size, self.hflip = batch_size, eval_batch_size, hflip
        self.num_workers, self.seed = num_workers, seed
        self.splits: dict[str, tuple[FolderImages, torch.Tensor]] = {}
        self.with_index = False  # training batches as (x, y, index into splits["train"]), as ImageDataModule's

    def locate(self) -> Path:
        """data.root, else <data_dir>/<name>, else $IMAGENET_DIR (locuslab/smoothing's variable)."""
        if self.root:
            return Path(self.root)
        candidates = [Path(self.data_dir) / self.spec.name] if self.data_dir else []
        if os.environ.get("IMAGENET_DIR"):
            candidates.append(Path(os.environ["IMAGENET_DIR"]))
        for folder in candidates:
            if (folder / self.train_dir).is_dir() or (folder / self.test_dir).is_dir():
                return folder
        raise VRSError(f"data set {self.spec.name} not found in {[str(c) for c in candidates]}: pass data.root=<folder "
                       f"with {self.train_dir}/ and {self.test_dir}/ class folders>")

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        root = self.locate()
        train, test = root / self.train_dir, root / self.test_dir
        if not train.is_dir() and not test.is_dir():
            raise VRSError(f"data.root={str(root)!r} holds neither {self.train_dir}/ nor {self.test_dir}/")
        classes = class_folders(train if train.is_dir() else test)
        if len(classes) != self.spec.num_classes:
            raise VRSError(f"{train if train.is_dir() else test} has {len(classes)} class folders, data.num_classes="
                           f"{self.spec.num_classes}: the labels would not be the network's (keep every class folder; "
                           "select images with data.train_list / data.test_list)")
        test_tf, c, s = ResizeCenterCrop(self.spec.size, self.resize), self.spec.channels, self.spec.size
        splits = {}
        if train.is_dir():
            paths, labels = list_images(train, classes, self.train_list, "data.train_list")
            perm = torch.randperm(len(paths), generator=torch.Generator().manual_seed(self.seed))
            if self.val_size >= len(perm):
                raise VRSError(f"data.val_size={self.val_size} leaves no training images ({train} has {len(perm)})")
            val_idx, train_idx = perm[: self.val_size].tolist(), perm[self.val_size:].tolist()
            if self.train_subset:
                train_idx = train_idx[: self.train_subset]
            splits["train"] = (FolderImages([paths[i] for i in train_idx], c, s, RandomResizedCropFlip(s, self.hflip)),
                               labels[train_idx])
            splits["val"] = (FolderImages([paths[i] for i in val_idx], c, s, test_tf), labels[val_idx])
        if test.is_dir():
            paths, labels = list_images(test, classes, self.test_list, "data.test_list")
            n = min(self.test_subset or len(paths), len(paths))
            splits["test"] = (FolderImages(paths[:n], c, s, test_tf), labels[:n])
        self.splits = _Splits(splits, missing=f"{root} has no "
                              f"{self.train_dir if 'train' not in splits else self.test_dir}/ folder")

    # ---- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        images, labels = self.splits[split]
        return DataLoader(_Split(images, labels, train and self.with_index),
                          batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, *rest = batch
        return (to_float(x), *rest)
