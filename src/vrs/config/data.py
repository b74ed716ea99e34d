"""The data node (conf/data/*.yaml: vrs.data.datamodule.ImageDataModule), typed: the keys whose range the data
module does not check itself (it checks name, channels, size, num_classes, mean / std, batch sizes, loader,
val_size >= 0, crop_padding: built by vrs.config_schema.cross_checks, no data loaded). Its other keys are the data
module's parameters (vrs.config.tree.check_targets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrs.config.rules import BOOL, SEED, TEXT, Checked, integer, key, optional
from vrs.errors import check


@dataclass(kw_only=True)
class SyntheticConfig(Checked):
    """data=synthetic's images (vrs.data.sources)."""

    NODE = "data.synthetic"

    num_train: int = key(integer(1))
    num_test: int = key(integer(1))
    seed: int = key(SEED)


@dataclass(kw_only=True)
class DataConfig(Checked):
    NODE = "data"
    CLOSED = False

    name: str = key(None, absent_ok=True)  # one of the data sets: the data module's check
    root: str | None = key(optional(TEXT), absent_ok=True)
    data_dir: str | None = key(optional(TEXT), absent_ok=True)
    download: bool = key(BOOL, absent_ok=True)
    val_size: int = key(integer(0), absent_ok=True)
    train_subset: int | None = key(optional(integer(1), " (all)"), absent_ok=True)
    test_subset: int | None = key(optional(integer(1), " (all)"), absent_ok=True)
    crop_padding: int = key(integer(0), absent_ok=True)
    hflip: bool = key(BOOL, absent_ok=True)
    num_workers: int = key(integer(0), absent_ok=True)
    seed: int = key(SEED, absent_ok=True)
    synthetic: Any = key(None, absent_ok=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.synthetic, dict):
            SyntheticConfig.of(self.synthetic)
        size = train_split_size(self.given())
        if size is not None and isinstance(self.val_size, int):
            check(self.val_size < size, "data.val_size", self.val_size, f"an integer below the {self.name} training "
                  f"split's size ({size}), so that training images are left")


def train_split_size(data: dict) -> int | None:
    """The number of images of the data set's training split (before data.val_size is held out), None if unknown."""
    from vrs.data.sources import TRAIN_SIZES  # deferred: torch; vrs-attack and vrs-train import this module at start-up

    if data.get("name") == "synthetic":
        return (data.get("synthetic") or {}).get("num_train")
    return TRAIN_SIZES.get(data.get("name"))
