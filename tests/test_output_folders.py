"""Which app's results a folder holds (vrs.utils.output_folders.held_results): Lightning's CSV log (logger=csv) is
written by every app, so beside vrs-certify's or vrs-attack's own files it is theirs, and the folder resumes."""

from __future__ import annotations

import pytest

from vrs.errors import VRSError
from vrs.utils.output_folders import check_output_folder, held_results


def touch(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")


def test_a_certify_run_with_a_csv_log_is_its_own_results_folder(tmp_path):
    touch(tmp_path, "certify.tsv", "certify.meta.json", "csv/metrics.csv", "csv/hparams.yaml")
    assert set(held_results(tmp_path)) == {"vrs-certify"}
    check_output_folder("certify", "paths.output_dir", tmp_path)  # resuming it is allowed
    with pytest.raises(VRSError, match="holds vrs-certify results"):
        check_output_folder("attack", "paths.output_dir", tmp_path)


def test_a_training_run_stays_a_training_run(tmp_path):
    touch(tmp_path, "csv/metrics.csv", "csv/hparams.yaml")  # a run stopped before its first checkpoint
    assert set(held_results(tmp_path)) == {"vrs-train"}
    with pytest.raises(VRSError, match="holds vrs-train results"):
        check_output_folder("certify", "paths.output_dir", tmp_path)
    touch(tmp_path, "checkpoints/last.ckpt", "certify.tsv")  # checkpoints are a training run's alone
    assert set(held_results(tmp_path)) == {"vrs-train", "vrs-certify"}
