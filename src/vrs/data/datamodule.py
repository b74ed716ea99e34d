"""LightningDataModule over whole data sets held as tensors.

Images are stored as uint8 (N, C, H, W). The default `loader: device` keeps them on the training device
and slices batches there (these data sets fit in GPU memory, and a per-sample Python DataLoader is the
bottleneck of small-image training); `loader: torch` uses an ordinary DataLoader instead. Either way
the batch reaches `on_after_batch_transfer` as uint8 on the device, where it becomes [0,1] floats and,
when training, gets per-sample random crop and flip on the device.

With `with_index = True` (set by a module before the loaders are built, e.g. by the selector stage when its
objective reads per-image labels cached for the training split) the training batches are (x, y, index), index
the images' positions in `splits["train"]`.
"""

from __future__ import annotations

import abc

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from vrs.data.sources import DATASETS, FOLDERS, load_splits
from vrs.errors import VRSError, check, check_choice


@dataclass
class DataSpec:
    """What a model needs to know about its data; stored in every checkpoint."""

    name: str
    channels: int
    size: int
    num_classes: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class TensorBatches:
    """Batches of (uint8 images, labels) sliced from tensors, shuffled per epoch with a seed.

    The permutation depends only on (seed, epoch), so every DDP rank agrees on it and a resumed run
    sees the same order; each rank takes every world_size-th index.

    Resumable (Lightning's state_dict / load_state_dict protocol for loaders): a mid-epoch checkpoint
    records (epoch, batches done), which `done_fn` reads from the trainer, and the restarted run skips
    those batches instead of replaying the epoch from its start.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                 epoch_fn: Callable[[], int] = lambda: 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, done_fn: Callable[[], int] = lambda: 0, with_index: bool = False):
        self.x, self.y, self.with_index = x, y, with_index
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch_fn, self.rank, self.world_size, self.drop_last = epoch_fn, rank, world_size, drop_last
        self.done_fn = done_fn
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch_fn()), "batches_done": int(self.done_fn())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def _indices(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + 100_003 * self.epoch_fn())
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        per_rank = n // self.world_size if self.world_size > 1 else n
        return order[self.rank :: self.world_size][:per_rank]

    def __len__(self) -> int:
        n = len(self.y) // self.world_size if self.world_size > 1 else len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        skip = 0
        if self._resume_at is not None:  # the first epoch after a restart: skip what the checkpoint trained on
            epoch, done = self._resume_at
            self._resume_at = None
            skip = done if epoch == self.epoch_fn() else 0
        idx = self._indices().to(self.x.device)
        for b in range(skip, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield (self.x[sel], self.y[sel], sel) if self.with_index else (self.x[sel], self.y[sel])


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0,1] (noise is added in this space, before normalisation)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def random_crop_flip(x: torch.Tensor, padding: int, hflip: bool) -> torch.Tensor:
    """Per-sample random crop (zero padding) and horizontal flip of a batch, on its own device."""
    b, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
        ox = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
        rows = (oy + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (ox + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    if hflip:
        flip = torch.rand(b, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


class SplitLoaders(pl.LightningDataModule, abc.ABC):
    """Lightning's three loaders, each `self._loader(split, train)` of the subclass."""

    @abc.abstractmethod
    def _loader(self, split: str, train: bool):
        """The DataLoader of one split ("train", "val" or "test"); train: shuffled and augmented."""

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("val", train=False)

    def test_dataloader(self):
        return self._loader("test", train=False)


class ImageDataModule(SplitLoaders):
    """Train / val / test splits of one data set, with a seeded train/val split."""

    def __init__(self, name: str, channels: int, size: int, num_classes: int, mean: list[float],
                 std: list[float], root: str | None = None, data_dir: str | None = None,
                 download: bool = False, val_size: int = 5000, train_subset: int | None = None,
                 test_subset: int | None = None, batch_size: int = 256, eval_batch_size: int = 1024,
                 crop_padding: int = 0, hflip: bool = False, loader: str = "device", num_workers: int = 0,
                 seed: int = 0, synthetic: dict | None = None):
        super().__init__()
        check_choice("data.name", name, DATASETS)
        check_choice("data.loader", loader, ("device", "torch"))
        for key, val in (("data.channels", channels), ("data.size", size), ("data.num_classes", num_classes),
                         ("data.batch_size", batch_size), ("data.eval_batch_size", eval_batch_size)):
            check(isinstance(val, int) and val > 0, key, val, "a positive integer")
        check(len(mean) == channels and len(std) == channels, "data.mean/data.std", (mean, std),
              f"one value per channel ({channels})")
        check(all(s > 0 for s in std), "data.std", std, "positive values")
        check(val_size >= 0, "data.val_size", val_size, "an integer >= 0")
        check(crop_padding >= 0, "data.crop_padding", crop_padding, "an integer >= 0")
        if root and not download and name in FOLDERS:  # checked before the run starts (vrs.config_schema)
            check(Path(root).is_dir(), "data.root", root, f"an existing directory with data.download=false: it "
                  f"{'is a file' if Path(root).exists() else 'does not exist'}, and an explicit root is never "
                  "replaced by another copy (data.root=null searches data.data_dir and the system copies)")
        self.spec = DataSpec(name, channels, size, num_classes, list(mean), list(std))
        self.root, self.data_dir, self.download = root, data_dir, download
        self.val_size, self.train_subset, self.test_subset = val_size, train_subset, test_subset
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.crop_padding, self.hflip = crop_padding, hflip
        self.loader, self.num_workers, self.seed = loader, num_workers, seed
        self.synthetic_args = dict(synthetic or {}, channels=channels, size=size, num_classes=num_classes)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.with_index = False  # training batches as (x, y, index into splits["train"]): see the module docstring

    @classmethod
    def from_spec(cls, spec: dict, **kwargs) -> ImageDataModule:
        """The data module of a stored data spec (a checkpoint's `DataSpec.to_dict()`); kwargs: the other settings."""
        return cls(**{k: spec[k] for k in ("name", "channels", "size", "num_classes", "mean", "std")}, **kwargs)

    # ---- loading ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if not self.splits:  # downloads (if any) happen here, once per node
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        s = load_splits(self.spec.name, self.root, self.data_dir, self.download, self.synthetic_args)
        self._check_shape(s.train_x, s.train_y)
        g = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(len(s.train_y), generator=g)
        if self.val_size >= len(perm):
            raise VRSError(f"data.val_size={self.val_size} leaves no training images (train split has {len(perm)})")
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_subset:
            train_idx = train_idx[: self.train_subset]
        test_n = min(self.test_subset or len(s.test_y), len(s.test_y))
        self.splits = {"train": (s.train_x[train_idx], s.train_y[train_idx]),
                       "val": (s.train_x[val_idx], s.train_y[val_idx]),
                       "test": (s.test_x[:test_n], s.test_y[:test_n])}

    def _check_shape(self, x: torch.Tensor, y: torch.Tensor) -> None:
        got = (x.shape[1], x.shape[2], x.shape[3])
        want = (self.spec.channels, self.spec.size, self.spec.size)
        if got != want:
            raise VRSError(f"data set {self.spec.name} has images of shape {got}, config says "
                           f"(data.channels, data.size, data.size) = {want}")
        if int(y.max()) >= self.spec.num_classes:
            raise VRSError(f"data set {self.spec.name} has label {int(y.max())} >= data.num_classes="
                           f"{self.spec.num_classes}")

    # ---- loaders ---------------------------------------------------------------------------
    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, train: bool):
        self.setup()
        x, y = self.splits[split]
        indexed = train and self.with_index
        bs = self.batch_size if train else self.eval_batch_size
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self.loader == "device":
            dev = self._device()
            epoch_fn = (lambda: trainer.current_epoch) if trainer is not None else (lambda: 0)
            done_fn = (lambda: 0) if not train or trainer is None else \
                (lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # batches trained this epoch
            return TensorBatches(x.to(dev), y.to(dev), bs, shuffle=train, seed=self.seed, epoch_fn=epoch_fn,
                                 rank=rank, world_size=world, drop_last=False, done_fn=done_fn,
                                 with_index=indexed)
        tensors = (x, y, torch.arange(len(y))) if indexed else (x, y)
        return DataLoader(TensorDataset(*tensors), batch_size=bs, shuffle=train, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, *rest = batch  # (x, y) or (x, y, index)
        x = to_float(x)
        trainer = self.trainer
        if trainer is not None and trainer.training and (self.crop_padding or self.hflip):
            x = random_crop_flip(x, self.crop_padding, self.hflip)
        return (x, *rest)
