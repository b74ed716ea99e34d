"""The one checkpoint reader (vrs.checkpoint): every refusal for both kinds (a base classifier and a VRS
selector checkpoint), the same read for every loader, and one read of a file per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from test_vrs_train import datamodule, fit_base, selector_module, trainer
from vrs import checkpoint
from vrs.checkpoint import check_data_matches, load_base_classifier, load_checkpoint, load_vrs
from vrs.errors import VRSError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

BOTH = ("classifier", "vrs")
OTHER_DATA = {"name": "synthetic", "channels": 1, "size": 8, "num_classes": 10, "mean": [0.3], "std": [0.4]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """kind -> checkpoint: a multi-sigma LeNet on digits and a VRS selector on it (one step each, seconds)."""
    root = tmp_path_factory.mktemp("ckpt_room")
    base = fit_base(root, epochs=1, limit_train_batches=2, limit_val_batches=1)
    pl.seed_everything(0, verbose=False)
    module = selector_module(base, diagnostics={"enabled": False})
    t = trainer(root, 1, limit_train_batches=1, limit_val_batches=0)
    t.fit(module, datamodule=datamodule())
    t.save_checkpoint(root / "vrs.ckpt")
    return {"classifier": base, "vrs": root / "vrs.ckpt"}


def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint src with edit(checkpoint dict) applied."""
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def refused(path: Path, message: str, kinds=BOTH) -> None:
    with pytest.raises(VRSError, match=message):
        load_checkpoint(path, kinds=kinds)


@pytest.mark.parametrize("kind", BOTH)
def test_foreign_and_broken_files_are_refused(kind, files, tmp_path):
    good = files[kind]
    raw = good.read_bytes()
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint" * 8)
    (tmp_path / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save(torch.load(good, weights_only=True)["state_dict"], tmp_path / "weights.pt")  # a bare state dict
    refused(tmp_path / "missing.ckpt", "checkpoint not found")
    refused(tmp_path, "is not a file")
    refused(tmp_path / "garbage.ckpt", "cannot read checkpoint .* it is corrupt or truncated")
    refused(tmp_path / "truncated.ckpt", "corrupt or truncated")
    refused(tmp_path / "empty.ckpt", "is empty")
    refused(tmp_path / "weights.pt", r"not a PyTorch Lightning checkpoint \(no state_dict\)")
    refused(edited(good, tmp_path / "no_vrs.ckpt", lambda c: c.pop("vrs")), r"not written by vrs-train")
    refused(edited(good, tmp_path / "future.ckpt", lambda c: c["vrs"].update(format=99)),
            f"checkpoint format 99 of kind '{kind}' is not supported")
    refused(edited(good, tmp_path / "unknown.ckpt", lambda c: c["vrs"].update(kind="gan")),
            "is a 'gan' checkpoint, not a base classifier checkpoint .* or a VRS selector checkpoint")


def test_a_checkpoint_of_the_wrong_kind_is_refused(files):
    refused(files["vrs"], r"is a 'vrs' checkpoint, not a base classifier checkpoint \(vrs-train\)$", ("classifier",))
    refused(files["classifier"], "is a 'classifier' checkpoint, not a VRS selector checkpoint", ("vrs",))
    with pytest.raises(VRSError, match="not a VRS selector checkpoint"):
        load_vrs(files["classifier"])
    with pytest.raises(VRSError, match="not a VRS selector checkpoint"):
        load_checkpoint(files["classifier"]).vrs_model()


@pytest.mark.parametrize("kind", BOTH)
def test_another_data_set_is_refused(kind, files):
    loaded = load_checkpoint(files[kind], kinds=BOTH)
    with pytest.raises(VRSError, match="was trained on digits, not synthetic"):
        check_data_matches(loaded, OTHER_DATA)
    check_data_matches(loaded, OTHER_DATA, allow_other_dataset=True)  # same shape and classes: allowed when asked
    with pytest.raises(VRSError, match=r"was trained on digits \(1x8x8, 10 classes\), but data=synthetic gives "
                                       r"synthetic \(1x8x8, 5 classes\)"):
        check_data_matches(loaded, {**OTHER_DATA, "num_classes": 5}, allow_other_dataset=True)
    with pytest.raises(VRSError, match=r"other normalisation constants \(mean \[0.3\] there, \[0.5\] here\)"):
        check_data_matches(loaded, {**loaded.data, "mean": [0.5]})
    with pytest.raises(VRSError, match=r"base classifier .* was trained on a different data set \(name 'digits' "
                                       r"there, 'synthetic' here\)"):
        load_base_classifier(files[kind], expect_data=OTHER_DATA)


def _wider(ckpt: dict, key: str) -> None:
    """Ask for a wider network than the stored weights (kind 'classifier': net; kind 'vrs': base or selector)."""
    if key == "net":
        ckpt["hyper_parameters"]["net"]["width"] *= 2
    else:
        ckpt["vrs"][key]["net"]["width"] *= 2


@pytest.mark.parametrize("kind, key, message", [
    ("classifier", "net", "the stored weights do not fit the stored network config"),
    ("vrs", "base", "the stored weights do not fit the stored network config"),
    ("vrs", "selector", "the stored selector weights do not fit its config")])
def test_weights_that_do_not_fit_are_refused(kind, key, message, files, tmp_path):
    refused(edited(files[kind], tmp_path / "wider.ckpt", lambda c: _wider(c, key)), message)


@pytest.mark.parametrize("kind", BOTH)
def test_missing_normalisation_is_refused(kind, files, tmp_path):
    prefix = "net.0." if kind == "classifier" else "base.0."
    refused(edited(files[kind], tmp_path / "no_norm_weights.ckpt", lambda c: c.update(
        state_dict={k: v for k, v in c["state_dict"].items() if not k.startswith(prefix)})),
        f"the weights lack the normalisation layer \\({prefix}mean / {prefix}std\\)")

    def no_constants(c):
        c["vrs"]["data"] = {**c["vrs"]["data"], "mean": [], "std": []}
        if kind == "classifier":
            c["hyper_parameters"]["data"] = {}
    refused(edited(files[kind], tmp_path / "no_constants.ckpt", no_constants), "has no normalisation constants")


def test_a_vrs_checkpoint_lacking_parts_is_refused(files, tmp_path):
    refused(edited(files["vrs"], tmp_path / "no_median.ckpt", lambda c: c["vrs"].pop("median")),
            r"checkpoint\['vrs'\] lacks \['median'\]")
    refused(edited(files["vrs"], tmp_path / "bad_median.ckpt", lambda c: c["vrs"]["median"].update(n_h=0)),
            "the stored median-smoothing settings are not usable .*median.n_h")


def test_one_read_serves_every_loader(files):
    """LoadedCheckpoint carries the VRS model's parts: building it reads nothing; the sha256 is the file's."""
    import hashlib

    loaded = load_checkpoint(files["vrs"], kinds=BOTH)
    assert loaded.sha256 == hashlib.sha256(files["vrs"].read_bytes()).hexdigest()
    model = loaded.vrs_model()
    assert model.base is loaded.network and model.selector is loaded.selector
    assert load_vrs(loaded).selector is loaded.selector and model.median.to_dict() == loaded.meta["median"]
    net, spec = load_base_classifier(files["vrs"])
    assert spec == loaded.meta["base"] and spec["data"]["name"] == "digits"
    net, spec = load_base_classifier(files["classifier"])
    assert spec["source"] == str(files["classifier"]) and spec["noise"]["_target_"].endswith("LogUniformSigma")


def test_a_file_is_read_once_per_process_until_it_changes(files, tmp_path, monkeypatch):
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(1) or real_load(*a, **kw))
    path = tmp_path / "copy.ckpt"
    path.write_bytes(files["vrs"].read_bytes())
    first = load_checkpoint(path, kinds=BOTH)
    load_vrs(path)
    load_base_classifier(path)
    assert len(calls) == 1
    # every load builds its own networks and gets its own config dicts: changing one leaves the others alone
    first.meta["median"]["n_h"] = 1
    second = load_checkpoint(path, kinds=BOTH)
    assert second.network is not first.network and second.meta["median"]["n_h"] != 1 and len(calls) == 1
    # a rewritten file is read again (and hashed anew)
    edited(files["vrs"], path, lambda c: c["vrs"].update(note="rewritten"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    again = load_checkpoint(path, kinds=BOTH)
    assert len(calls) == 3 and again.sha256 != first.sha256  # edited() itself loads once
    assert len(checkpoint._READS) <= checkpoint._REMEMBERED
