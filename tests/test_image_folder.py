"""The class-folder data module (data=imagenet, vrs.data.image_folder) on a tiny tree of JPEGs written here.

Known answers: images of one flat colour keep it through resize and crop (JPEG at quality 100: within 3 of 255);
a horizontal ramp whose pixel value is 6 x column shows which columns the center crop kept; labels are the
positions of the sorted class folders; the random-resized crop's boxes stay within the allowed area and aspect
ratio over many draws and fall back to the centre when none fits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
from vrs.apps.skeleton import load_data
from vrs.data.image_folder import random_resized_crop_box
from vrs.errors import VRSError

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["n01", "n02", "n03"]  # sorted: labels 0, 1, 2
COLOURS = {"n01": (250, 10, 10), "n02": (10, 250, 10), "n03": (10, 10, 250)}
SIZE, RESIZE = 16, 20


def jpeg(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, quality=100, subsampling=0)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/: 4 flat-colour images per class of assorted shapes; val/: 2 per class, plus a 20x40 ramp in n02."""
    root = tmp_path_factory.mktemp("imagenet")
    shapes = [(30, 40), (50, 24), (20, 20), (64, 48)]
    for c, name in enumerate(CLASSES):
        for i, (h, w) in enumerate(shapes):
            jpeg(root / "train" / name / f"{name}_{i}.JPEG", np.broadcast_to(COLOURS[name], (h, w, 3)))
        for i, (h, w) in enumerate(shapes[:2]):
            jpeg(root / "val" / name / f"val_{c}{i}.JPEG", np.broadcast_to(COLOURS[name], (h, w, 3)))
    ramp = np.repeat((6 * np.arange(40))[None, :, None], 20, axis=0).repeat(3, axis=2)  # value = 6 x column
    jpeg(root / "val" / "n02" / "val_ramp.JPEG", ramp)
    (root / "val" / "n03" / "notes.txt").write_text("not an image\n")  # not an image suffix: left out
    return root


def module(root, *overrides: str):
    cfg = compose_config("data=imagenet", f"data.root={root}", f"data.size={SIZE}", f"data.resize={RESIZE}",
                         "data.num_classes=3", "data.val_size=3", "data.num_workers=0", *overrides,
                         config_name="certify")
    return instantiate(cfg.data)


def test_test_split_resizes_center_crops_and_labels_like_imagefolder(tree):
    dm = module(tree)
    dm.setup()
    x, y = dm.splits["test"]
    assert x.shape == (7, 3, SIZE, SIZE) and len(y) == 7
    names = [p.name for p in x.paths]
    assert names == ["val_00.JPEG", "val_01.JPEG", "val_10.JPEG", "val_11.JPEG", "val_ramp.JPEG", "val_20.JPEG",
                     "val_21.JPEG"]  # sorted classes, sorted files: the order of Cohen et al.'s --skip
    assert y.tolist() == [0, 0, 1, 1, 1, 2, 2]
    batch = x[[0, 2, 5]]
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, SIZE, SIZE)
    for img, name in zip(batch, ("n01", "n02", "n03")):
        assert (img.int() - torch.tensor(COLOURS[name]).view(3, 1, 1)).abs().max() <= 3
    ramp = x[4].int()  # 20x40: shorter side already 20, so no resize; crop columns round(24 / 2) = 12 .. 27
    assert (ramp[0, 5] - 6 * torch.arange(12, 28)).abs().max() <= 3
    assert x[1:3].shape == (2, 3, SIZE, SIZE) and x[torch.tensor([6])].shape == (1, 3, SIZE, SIZE)


def test_resize_keeps_the_shorter_side_and_truncates_the_longer(tree):
    from vrs.data.image_folder import resize_shorter

    assert resize_shorter(Image.new("RGB", (40, 30)), 256).size == (341, 256)  # int(256 * 40 / 30) = 341
    assert resize_shorter(Image.new("RGB", (375, 500)), 256).size == (256, 341)
    assert resize_shorter(Image.new("RGB", (256, 300)), 256).size == (256, 300)


def test_train_and_val_splits_and_the_loader(tree):
    dm = module(tree, "data.batch_size=5")
    dm.setup()
    (xt, yt), (xv, yv) = dm.splits["train"], dm.splits["val"]
    assert len(yt) == 9 and len(yv) == 3 and sorted(yt.tolist() + yv.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert {p.name for p in xt.paths}.isdisjoint(p.name for p in xv.paths)
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer(batch, 0)
    assert x.shape == (5, 3, SIZE, SIZE) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    colours = torch.tensor([COLOURS[c] for c in CLASSES], dtype=torch.float32) / 255
    assert torch.allclose(x.mean(dim=(2, 3)), colours[y], atol=3 / 255)  # crops of flat colours: the class's colour
    dm.with_index = True
    assert len(next(iter(dm.train_dataloader()))) == 3


def test_file_lists_select_a_subset_with_the_labels_of_the_whole_tree(tree, tmp_path):
    listed = tmp_path / "subset.txt"
    listed.write_text("# two images\nn03/val_21.JPEG\n\nn02/val_ramp.JPEG\n")
    dm = module(tree, f"data.test_list={listed}")
    dm.setup()
    x, y = dm.splits["test"]
    assert [p.name for p in x.paths] == ["val_21.JPEG", "val_ramp.JPEG"] and y.tolist() == [2, 1]


def test_the_apps_read_it_through_load_data(tree):
    cfg = compose_config("data=imagenet", f"data.root={tree}", f"data.size={SIZE}", f"data.resize={RESIZE}",
                         "data.num_classes=3", "data.num_workers=0", "data.val_size=0", config_name="certify")
    from omegaconf import OmegaConf

    x, y, spec = load_data(OmegaConf.to_container(cfg.data, resolve=True), "test")
    assert spec["name"] == "imagenet" and x[[0, 1]].shape == (2, 3, SIZE, SIZE) and len(y) == 7


def test_random_resized_crop_boxes_stay_within_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        left, top, w, h = random_resized_crop_box(200, 120, generator=g)
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 120
        # rounding to whole pixels moves area and ratio a little beyond the drawn ones
        assert 0.08 * 200 * 120 * 0.9 <= w * h <= 200 * 120
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # a 100x1 strip: every draw needs a height >= 2, so the central crop of the closest ratio (4/3 of 1 -> 1 wide)
    assert random_resized_crop_box(100, 1, generator=g) == ((100 - 1) // 2, 0, 1, 1)
    # a 10x100 column: the fallback keeps the width and cuts round(10 / (3/4)) = 13 rows from the middle
    assert random_resized_crop_box(10, 100, scale=(0.99, 1.0), generator=g) == (0, (100 - 13) // 2, 10, 13)


BAD = [
    ("data.root={tree}/train/n01/n01_0.JPEG", "data.root="),
    ("data.num_classes=4", "has 3 class folders, data.num_classes=4"),
    ("data.test_list={tree}/missing.txt", "data.test_list="),
    ("data.val_size=12", "data.val_size=12 leaves no training images"),
    ("data.resize=8", "data.resize=8 is not allowed: at least data.size (16)"),
]


@pytest.mark.parametrize("override,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_settings_are_one_clear_error(override, expect, tree):
    with pytest.raises(Exception) as err:
        module(tree, override.format(tree=tree)).setup()
    from vrs.errors import find_user_error

    user = find_user_error(err.value)
    assert user is not None and expect in str(user) and "\n" not in str(user), err.value


def test_a_corrupt_image_or_a_bad_list_line_names_the_file(tree, tmp_path):
    bad_root = tmp_path / "bad"
    for name in CLASSES:
        (bad_root / "val" / name).mkdir(parents=True)
        jpeg(bad_root / "val" / name / "ok.JPEG", np.zeros((20, 20, 3)))
    (bad_root / "val" / "n01" / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    dm = module(bad_root)
    dm.setup()
    with pytest.raises(VRSError, match=r"cannot read image .*n01/broken.JPEG"):
        dm.splits["test"][0][0]
    with pytest.raises(VRSError, match="no train split"):
        dm.splits["train"]
    listed = tmp_path / "list.txt"
    listed.write_text("n09/x.JPEG\n")
    with pytest.raises(VRSError, match=r"list.txt, line 1: 'n09/x.JPEG' is not <class folder>/<image>"):
        module(tree, f"data.test_list={listed}").setup()
