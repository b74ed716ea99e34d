"""The results store shared by vrs-certify and vrs-attack (vrs.apps.results): settings sidecars written by
earlier versions still resume, one image-subset rule with one error, one lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config
from vrs.apps.certify_store import COLUMNS, META_NAME, RESULTS_FORMAT, ResultsDir, format_row
from vrs.apps.results import ResultsStore, Table, select_indices
from vrs.errors import ConfigError, VRSError

# certify.meta.json as vrs-certify wrote it before issue 16: the checkpoint as ckpt_sha256 / ckpt_path
OLD_META = {"mode": "certify", "n0": 10, "n": 100, "alpha": 0.001, "sigma": 0.25, "seed": 0, "ckpt_sha256": "ab",
            "ckpt_path": "/x/last.ckpt", "data": "digits", "split": "test", "precision": "fp32", "noise_block": 1024,
            "device_type": "cpu", "format": RESULTS_FORMAT}


def _row(idx: int) -> str:
    return format_row("certify", {"idx": idx, "label": 1, "predict": 1, "radius": 0.5, "correct": 1, "time": 0.5,
                                  "sigma": 0.25})


def test_an_old_certify_meta_file_resumes(tmp_path):
    (tmp_path / META_NAME).write_text(json.dumps(OLD_META))
    (tmp_path / "certify.tsv").write_text("\t".join(COLUMNS["certify"]) + "\n" + _row(0) + _row(1))
    before = (tmp_path / META_NAME).read_bytes()
    new = {k: v for k, v in OLD_META.items() if k not in ("ckpt_sha256", "ckpt_path", "format")}
    store = ResultsDir(tmp_path, {**new, "checkpoint_sha256": "ab", "checkpoint": "/x/last.ckpt"})
    assert sorted(store.open()) == [0, 1]
    assert (tmp_path / META_NAME).read_bytes() == before  # the old sidecar is kept as it is
    with pytest.raises(VRSError, match="checkpoint_sha256: existing 'ab', now 'cd'"):
        ResultsDir(tmp_path, {**new, "checkpoint_sha256": "cd"}).open()


def test_an_old_certify_results_dir_resumes_in_the_app(digits_ckpt, tmp_path):
    from vrs.apps.certify import certify

    args = ["data=digits", f"ckpt_path={digits_ckpt}", "certify.n0=10", "certify.n=100", "certify.max=3",
            "logger=none", "print_config=false", "certify.progress=false", f"certify.out_dir={tmp_path / 'out'}"]
    first = certify(compose_config(*args, config_name="certify", output_dir=tmp_path / "h1"))
    meta_path = tmp_path / "out" / META_NAME
    meta = json.loads(meta_path.read_text())
    old = {("ckpt_sha256" if k == "checkpoint_sha256" else "ckpt_path" if k == "checkpoint" else k): v
           for k, v in meta.items()}
    meta_path.write_text(json.dumps(old))  # as the code before issue 16 wrote it
    tsv = (tmp_path / "out" / "certify.tsv").read_bytes()
    again = certify(compose_config(*args, config_name="certify", output_dir=tmp_path / "h2"))
    assert again["images_this_run"] == 0 and again["acr"] == first["acr"]
    assert (tmp_path / "out" / "certify.tsv").read_bytes() == tsv


def test_an_old_attack_settings_file_resumes_and_other_settings_are_refused(tmp_path):
    table = Table(app="vrs-attack", out_key="attack.out_dir", name="attack.csv", sidecar="settings.json",
                  columns=("idx", "eps", "correct"), key=("idx", "eps"),
                  match=("checkpoint_sha256", "data", "split", "seed", "attack"))
    settings = {"checkpoint": "/x.ckpt", "checkpoint_sha256": "ab", "data": "digits", "split": "test", "seed": 0,
                "attack": {"name": "pgd", "steps": 10}}
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    (tmp_path / "attack.csv").write_text("idx,eps,correct\n0,0.5,1\n1,0.5,0\n2,0.")  # a torn last line
    (tmp_path / "attack.rank1.csv").write_text("idx,eps,correct\n3,0.5,1\n1,0.5,0\n")  # one row twice
    rows = ResultsStore(tmp_path, table, settings).open()
    assert sorted(rows) == [("0", "0.5"), ("1", "0.5"), ("3", "0.5")]
    assert (tmp_path / "attack.csv").read_text() == "idx,eps,correct\n0,0.5,1\n1,0.5,0\n3,0.5,1\n"
    assert not list(tmp_path.glob("attack.rank*.csv"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(VRSError, match=r"other settings \(attack.steps: existing 10, now 20\).*attack.out_dir"):
        ResultsStore(tmp_path, table, {**settings, "attack": {"name": "pgd", "steps": 20}}).open()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_one_subset_rule_for_both_apps():
    assert select_indices(10, "test", "certify", skip=3) == [0, 3, 6, 9]
    assert select_indices(10, "test", "attack", skip=2, max_images=2) == [0, 2]
    assert select_indices(10, "test", "attack", indices=5) == [5]
    for app in ("certify", "attack"):
        with pytest.raises(ConfigError, match=rf"{app}\.indices=\[12\] is not allowed: indices below the test "):
            select_indices(10, "test", app, indices=[1, 12])


def test_the_lock_names_the_app_and_its_key(tmp_path):
    table = Table(app="vrs-attack", out_key="attack.out_dir", name="attack.csv", sidecar="settings.json",
                  columns=("idx", "eps"))
    a = ResultsStore(tmp_path, table, {})
    a.lock()
    with pytest.raises(VRSError, match="another vrs-attack is writing to .*use another attack.out_dir"):
        ResultsStore(tmp_path, table, {}).lock()
    a.unlock()
    (tmp_path / "file").write_text("x")
    with pytest.raises(VRSError, match="attack.out_dir=.* is a file"):
        ResultsStore(Path(tmp_path / "file"), table, {}).lock()


def test_a_directory_of_another_apps_results_is_refused_untouched(tmp_path):
    certify_dir = tmp_path / "c"
    store = ResultsDir(certify_dir, {k: v for k, v in OLD_META.items() if k != "format"})
    store.open()
    (certify_dir / "certify.tsv").write_text("\t".join(COLUMNS["certify"]) + "\n" + _row(0))
    (certify_dir / "summary.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in certify_dir.iterdir()}
    attack = Table(app="vrs-attack", out_key="attack.out_dir", name="attack.csv", sidecar="settings.json",
                   columns=("idx", "eps"))
    with pytest.raises(VRSError, match="holds vrs-certify results .*use another attack.out_dir"):
        ResultsStore(certify_dir, attack, {}).open()
    assert {p.name: p.read_bytes() for p in certify_dir.iterdir()} == before
    ResultsStore(tmp_path / "a", attack, {}).open()
    with pytest.raises(VRSError, match="holds vrs-attack results \\(settings.json\\).*use another certify.out_dir"):
        ResultsDir(tmp_path / "a", OLD_META).open()


def test_a_refused_store_leaves_no_new_folder(tmp_path):
    """The lock creates the results folder (and its parents); a store refused when it is opened removes those it
    created while they are empty, and never a folder that was there before."""
    from vrs.apps.skeleton import Ranks, open_store

    def refuse(rows):
        raise VRSError("refused")

    out = tmp_path / "new" / "store"
    with pytest.raises(VRSError, match="refused"):
        open_store(Ranks(0, 1), ResultsDir(out, dict(OLD_META)), refuse)
    assert list(tmp_path.iterdir()) == []
    out.mkdir(parents=True)
    with pytest.raises(VRSError, match="refused"):
        open_store(Ranks(0, 1), ResultsDir(out, dict(OLD_META)), refuse)
    assert out.is_dir() and list(out.iterdir()) == []
