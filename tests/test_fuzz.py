"""Malformed overrides, configs, paths and checkpoints against every app's entry point (vrs-train, vrs-certify
incl. certify=vrs_c1, vrs-attack, vrs-report): each gives exit code 2, exactly one `error:` line and no
traceback, and leaves the existing output files byte-identical. Most cases call the app's `main` in this
process (argv patched, SystemExit caught); a few run as real console processes. Then trouble from outside
the config: a read-only output directory, and W&B unreachable or refusing the key (no network needed).

Every train case reuses one existing run directory (hydra.run.dir): a bad config must not even let Hydra
rewrite its .hydra/ files. Cases marked in_task fail only once the app has started (the data set or the
checkpoint's kind decide); Hydra has then made a fresh run directory of its own, but the app's output
directory is still untouched.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO_ROOT, app_command, app_env, call_main, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Case:
    app: str
    args: tuple[str, ...]
    expect: str            # in the error line
    in_task: bool = False  # found once the app runs (not by the config check before Hydra's run directory)


def case(app: str, args: str, expect: str, in_task: bool = False) -> Case:
    return Case(app, tuple(args.split()), expect, in_task)


CASES = [
    # vrs-train: Hydra's errors, bad values, cross-key rules, bad checkpoints, bad paths
    case("train", "data=foo", "data='foo' is not allowed: one of cifar10, cifar100, digits"),
    case("train", "experiment=nope", "experiment='nope' is not allowed: one of"),
    case("train", "noise.sgima=0.3", "noise.sgima=0.3 is not allowed: a key of noise"),
    case("train", "+trainer.max_epoch=3", "trainer.max_epoch=3 is not allowed: a parameter of pytorch_lightning.Trainer"),
    case("train", "+foo=[1", "cannot parse the override '+foo=[1'"),
    case("train", "trainer", "cannot parse the override 'trainer'"),
    case("train", "noise.sigma=0", "noise.sigma=0 is not allowed: a number > 0"),
    case("train", "noise.sigma=abc", "noise.sigma='abc' is not allowed"),
    case("train", "noise.sigma=${{oops}}", "the config does not resolve at noise.sigma"),
    case("train", "noise=multi noise.sigma_min=0.5 noise.sigma_max=0.25", "noise.sigma_max=0.25 is not allowed"),
    case("train", "optimizer.lr=-0.1", "optimizer.lr=-0.1 is not allowed: a number > 0"),
    case("train", "trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed: an integer >= 1"),
    case("train", "data.val_size=5000", "data.val_size=5000 is not allowed"),
    case("train", "model.in_channels=3", "model.in_channels=3 is not allowed: data.channels (1)"),
    case("train", "model=resnet20 model.depth=21", "model.depth=21 is not allowed"),
    case("train", "model=mlp model.hidden=0", "model.hidden=0 is not allowed: an integer >= 1"),
    case("train", "seed=-1", "seed=-1 is not allowed: an integer >= 0"),
    case("train", "module=selector", "the config does not resolve at module.selector"),  # no selector group
    case("train", "ckpt_path={tmp}/nope.ckpt", "ckpt_path: checkpoint not found"),
    case("train", "ckpt_path={truncated}", "corrupt or truncated"),
    case("train", "ckpt_path={empty}", "is empty"),
    case("train", "data=synthetic data.channels=1 data.size=8 data.mean=[0.3] data.std=[0.4] model.width=16 "
                  "model.hidden=64 ckpt_path={ckpt}", "was trained on other data"),
    case("train", "hydra.run.dir={file}", "paths.output_dir='{file}' is not allowed: a directory (this is a file)"),
    case("train", "paths.min_free_mb=1000000000000", "MB free (paths.min_free_mb)"),
    # vrs-train: values that used to pass validation and fail later (after an epoch, or with a traceback)
    case("train", "data.val_size=0", "data.val_size=0 is not allowed: an integer >= 1 while optimized_metric=val/acc"),
    case("train", "+trainer.limit_val_batches=0", "trainer.limit_val_batches=0 is not allowed: a number > 0 while"),
    case("train", "+trainer.val_check_interval=100000", "trainer.val_check_interval=100000 is not allowed: at most the"),
    case("train", "+trainer.val_check_interval=5 +trainer.limit_train_batches=3",
         "trainer.val_check_interval=5 is not allowed: at most the 3 training batches of an epoch"),
    case("train", "trainer.check_val_every_n_epoch=5 trainer.max_epochs=2",
         "trainer.check_val_every_n_epoch=5 is not allowed: at most trainer.max_epochs (2)"),
    case("train", "test=false optimized_metric=test/acc", "optimized_metric='test/acc' is not allowed: a train/ or val/"),
    case("train", "callbacks.model_checkpoint.monitor=test/acc", "callbacks.model_checkpoint.monitor='test/acc' is not"),
    case("train", "+trainer.enable_checkpointing=false", "trainer.enable_checkpointing=False is not allowed: a value "
                                                         "Lightning's Trainer takes"),
    case("train", "+trainer.enable_progress_bar=false", "trainer.enable_progress_bar=False is not allowed"),
    case("train", "+trainer.profiler=foo", "trainer.profiler='foo' is not allowed"),
    case("train", "+trainer.strategy=foo", "trainer.strategy='foo' is not allowed"),
    case("train", "trainer.accelerator=mps", "trainer.accelerator='mps' is not allowed"),  # no MPS on Linux
    case("train", "trainer.precision=fp64", "trainer.precision='fp64' is not allowed: a value Lightning's Trainer takes "
                                            "with this config and machine; it says: Precision 'fp64' is invalid. "
                                            "Allowed precision values: ("),  # Lightning's list, not a copy
    case("train", "+trainer.logger=false", "trainer.logger=False is not allowed: no key of trainer: the logger group"),
    case("train", "+trainer.callbacks=[]", "trainer.callbacks=[] is not allowed: no key of trainer"),
    case("train", "seed=4294967296", "seed=4294967296 is not allowed: an integer >= 0 and <= 4294967295"),
    case("train", "data.seed=18446744073709551616", "data.seed=18446744073709551616 is not allowed"),
    case("train", "noise.sigma=1e39", "noise.sigma=1e+39 is not allowed: 0 or a finite number between"),
    case("train", "data.std=[1e-50]", "data.std=[1e-50] is not allowed: each 0 or a finite number"),
    case("train", "data.batch_size=9223372036854775808", "an integer of at most 9223372036854775807 in size"),
    # vrs-train: the base classifier's training method (the training group)
    case("train", "training=nope", "training='nope' is not allowed: one of consistency, gaussian, macer, smoothadv"),
    case("train", "training=macer training.k=0", "training.k=0 is not allowed: an integer >= 1"),
    case("train", "training=consistency training.m=1", "training.m=1 is not allowed: an integer >= 2"),
    case("train", "training=smoothadv training.eps=-1", "training.eps=-1 is not allowed: a number > 0"),
    case("train", "training=smoothadv +training.epsilon=1", "training.epsilon=1 is not allowed: a parameter of"),
    # vrs-certify (Cohen's and VRS's certification)
    case("certify", "certify=nope", "certify='nope' is not allowed: one of cohen"),
    case("certify", "certify.n0=0", "certify.n0=0 is not allowed"),
    case("certify", "certify.n0=5000 certify.n=1000", "certify.n0=5000 is not allowed: at most certify.n=1000"),
    case("certify", "certify.alpha=1.5", "certify.alpha=1.5 is not allowed"),
    case("certify", "certify.split=dev", "certify.split='dev' is not allowed: one of test, val, train"),
    case("certify", "+certify.nn=10", "certify.nn=10 is not allowed: a key of certify"),
    case("certify", "certify=vrs_c1 certify.lam=1.5", "certify.lam=1.5 is not allowed: a number in [0, 1]"),
    case("certify", "certify=vrs_c1", "needs a VRS selector checkpoint", in_task=True),
    # issue 18: the input-dependent methods' options
    case("certify", "certify=dual_rs", "needs a VRS selector checkpoint", in_task=True),
    case("certify", "certify=vrs_c1 certify.selector_smoothing=vote", "certify.certificate='c1' is not allowed: "
                                                                      "dual_rs with certify.selector_smoothing=vote"),
    case("certify", "sigma_search=nope", "sigma_search='nope' is not allowed: one of dds, multiscale"),
    case("certify", "sigma_search=multiscale sigma_search.p0=0.4", "sigma_search.p0=0.4 is not allowed: a number in "
                                                                  "[0.5, 1)"),
    case("certify", "sigma_search=dds sigma_search.steps=-1", "sigma_search.steps=-1 is not allowed: an integer >= 0"),
    case("certify", "sigma_search=dds sigma_search.sigma_init=2", "sigma_search.sigma_init=2 is not allowed"),
    case("certify", "sigma_search=multiscale certify.sigma=0.5", "certify.sigma=0.5 is not allowed: null with "
                                                                "sigma_search=multiscale"),
    case("certify", "sigma_search=multiscale certify=vrs_c1", "use it with certify=cohen"),
    case("certify", "ckpt_path={garbage}", "corrupt or truncated"),
    case("certify", "ckpt_path=null", "ckpt_path=None is not allowed"),
    case("certify", "data=synthetic", "was trained on digits (1x8x8, 10 classes)"),
    case("certify", "data.mean=[0.5]", "other normalisation constants (mean [0.3] there, [0.5] here)"),
    case("certify", "certify.indices=[5000]", "certify.indices", in_task=True),
    case("certify", "certify.n=9223372036854775808", "certify.n=9223372036854775808 is not allowed: an integer of"),
    case("certify", "seed=4294967296", "seed=4294967296 is not allowed"),
    case("certify", "certify.out_dir={file}", "certify.out_dir='{file}' is not allowed: a directory (this is a file)"),
    case("certify", "certify.out_dir={corrupt_certify}", "certify.meta.json is unreadable", in_task=True),
    # the typed configs (vrs.config): a value of the wrong type or a deleted key, refused when Hydra composes
    case("certify", "certify.n=1.5", "certify.n=1.5 is not allowed: an integer"),
    case("certify", "certify.split=[1]", "certify.split=[1] is not allowed: one of test, val, train"),
    case("certify", "certify.progress=maybe", "certify.progress=maybe is not allowed: true or false"),
    case("certify", "certify.nn=3", "certify.nn=3 is not allowed: a key of certify: one of mode, n0, n, alpha"),
    case("certify", "~certify.n", "certify.n cannot be deleted: every key of certify is needed"),
    case("certify", "certify=vrs_c2 certify.c2_tol=abc", "certify.c2_tol=abc is not allowed: a number > 0"),
    case("attack", "defense.m=abc", "defense.m=abc is not allowed: an integer >= 1"),
    case("attack", "predict.precision=fp8", "predict.precision='fp8' is not allowed: one of fp32, tf32, bf16, fp16"),
    case("report", "report.title=[a]", "report.title=[a] is not allowed: null or a non-empty string"),
    case("report", "paths.min_free_mb=-1", "paths.min_free_mb=-1 is not allowed: a number >= 0"),
    # vrs-attack
    case("attack", "attack=nope", "attack='nope' is not allowed: one of"),
    case("attack", "attack.eps=-1", "attack.eps=-1 is not allowed"),
    case("attack", "attack=pgd_linf attack.eps=2", "at most 1 for the L-inf norm"),
    case("attack", "attack.steps=0", "attack.steps=0 is not allowed"),
    case("attack", "attack.norm=l3", "attack.norm"),
    case("attack", "attack=fgsm attack.eot=4", "attack.eot=4 is not allowed"),
    case("attack", "defense.lam=2", "defense.lam=2 is not allowed: a number in [0, 1]"),
    case("attack", "+defense.foo=1", "defense.foo=1 is not allowed: a key of defense"),
    case("attack", "defense.selector_smoothing=mean", "defense.selector_smoothing='mean' is not allowed: one of median, "
                                                      "vote"),
    case("attack", "defense.selector_smoothing=vote", "needs a VRS selector checkpoint", in_task=True),
    case("attack", "sigma_search=multiscale sigma_search.grid=[]", "sigma_search.grid=[] is not allowed"),
    case("attack", "sigma_search=dds defense.sigma=0.5", "defense.sigma=0.5 is not allowed: null with sigma_search=dds"),
    case("attack", "predict.alpha=0", "predict.alpha=0 is not allowed"),
    case("attack", "device=tpu", "device='tpu' is not allowed"),
    case("attack", "attack.steps=9223372036854775808", "attack.steps=9223372036854775808 is not allowed"),
    case("attack", "defense.sigma=1e39", "defense.sigma=1e+39 is not allowed"),
    case("attack", "ckpt_path={truncated}", "corrupt or truncated"),
    case("attack", "attack.indices=[5000]", "attack.indices=[5000] is not allowed", in_task=True),
    case("attack", "attack.out_dir={corrupt_attack}", "settings.json is not valid JSON", in_task=True),
    # a model that cannot be right: non-finite weights (refused when the file is read, before a run directory)
    # and finite weights whose logits overflow (refused while sampling: nothing written for those images)
    case("train", "ckpt_path={nan_ckpt}", "holds non-finite weights: net.1.features.0.weight has 1 NaN"),
    case("certify", "ckpt_path={nan_ckpt}", "checkpoint {nan_ckpt} holds non-finite weights: net.1.features.0.weight"),
    case("certify", "ckpt_path={inf_ckpt}", "checkpoint {inf_ckpt} holds non-finite weights: net.1.classifier.4.bias "
                                            "has 2 Inf"),
    case("certify", "ckpt_path={nan_ckpt} certify.mode=predict", "holds non-finite weights"),
    case("attack", "ckpt_path={nan_ckpt}", "checkpoint {nan_ckpt} holds non-finite weights"),
    case("certify", "ckpt_path={overflow_ckpt} certify.max=2 certify.out_dir={tmp}/overflow_certify", "checkpoint {overflow_ckpt} gives non-finite (NaN / Inf) "
                                                               "logits for 220 of 220 noisy samples", in_task=True),
    case("certify", "ckpt_path={overflow_ckpt} certify.mode=predict certify.max=1 certify.out_dir={tmp}/overflow_predict",
         "gives non-finite (NaN / Inf) logits for 100 of 100", in_task=True),
    case("attack", "ckpt_path={overflow_ckpt} attack.max=1 attack.steps=1 predict.n=20 defense.m=1 "
                   "attack.out_dir={tmp}/overflow_attack",
         "checkpoint {overflow_ckpt} gives non-finite (NaN / Inf) logits", in_task=True),
    # an explicit data.root that is missing is never replaced by another copy (here: the system Fashion-MNIST)
    case("train", "data=fashion_mnist data.root={tmp}/missing data.download=false",
         "data.root='{tmp}/missing' is not allowed: an existing directory with data.download=false: it does not exist"),
    case("train", "data=mnist data.root={file} data.download=false", "data.root='{file}' is not allowed: an existing "
                                                                      "directory with data.download=false: it is a file"),
    case("certify", "data=fashion_mnist data.root={tmp}/missing data.download=false",
         "data.root='{tmp}/missing' is not allowed"),
    case("attack", "data=mnist data.size=8 allow_other_dataset=true data.root={empty_dir} data.download=false",
         "data.root='{empty_dir}' holds no mnist files", in_task=True),
    # radius grids: repeats refused (an unsorted one is sorted with a warning: test_warnings_name_the_problem)
    case("certify", "certify.radius_grid=[0.5,0.25,0.5]", "certify.radius_grid=[0.5, 0.25, 0.5] is not allowed: a non-empty list "
                                                          "without repeats"),
    case("certify", "certify.radius_grid=[1,1.0]", "certify.radius_grid=[1, 1.0] is not allowed: radii without repeats "
                                                   "(1 twice)", in_task=True),
    # certify.sampling / sound (issue 21)
    case("certify", "certify.sampling=adaptive", "certify.sampling='adaptive' is not allowed: one of fixed, sequential, "
                                                 "radius_target"),
    case("certify", "certify.sampling=radius_target", "certify.radii=None is not allowed: a non-empty list of target radii"),
    case("certify", "certify.sampling=radius_target certify.radii=[0.5,-1]", "certify.radii=[0.5, -1] is not allowed"),
    case("certify", "certify.looks=0", "certify.looks=0 is not allowed: an integer >= 1 and <= 30"),
    case("certify", "certify.sampling=sequential certify.mode=predict", "certify.sampling='sequential' is not allowed: "
                                                                        "fixed with certify.mode=predict"),
    case("certify", "certify=vrs_c1 certify.sound=true", "certify.sound=True is not allowed: false with "
                                                         "certify.certificate='c1'"),
    case("certify", "sigma_search=multiscale certify.sound=true", "certify.sound=True is not allowed: false with "
                                                                  "sigma_search=multiscale"),
    case("report", "report.radii=[0.5,0.5]", "report.radii=[0.5, 0.5] is not allowed: a non-empty list without repeats"),
    # vrs-report
    case("report", "report.inputs=[]", "report.inputs=[] is not allowed"),
    case("report", "report.inputs=[{tmp}/missing]", "does not exist"),
    case("report", "report.inputs=[{file}]", "not files"),
    case("report", "report.radii=[-1]", "report.radii=[-1] is not allowed"),
    case("report", "+report.foo=1", "report.foo=1 is not allowed: a key of report"),
    case("report", "report.out_dir={file}", "report.out_dir='{file}' is not allowed: a directory (this is a file)"),
    case("report", "report.inputs=[{empty_dir}]", "holds no runs", in_task=True),
    case("report", "report.inputs=[{corrupt_certify}]", "unreadable (JSONDecodeError", in_task=True),
    # vrs-dashboard (its base: dashboard.dry_run=true); a save without an API key is refused before Hydra's run directory
    case("dashboard", "dashboard.sections=[training,bogus]", "dashboard.sections=['training', 'bogus'] is not allowed: "
                                                             "a non-empty list of: training, certification, robustness"),
    case("dashboard", "dashboard.radii=[0.5,-1]", "dashboard.radii=[0.5, -1] is not allowed: a non-empty list of distinct "
                                                  "radii >= 0"),
    case("dashboard", "dashboard.attacks=[pgd-l2]", "dashboard.attacks=['pgd-l2'] is not allowed: a list of distinct "
                                                    "attack names"),
    case("dashboard", "dashboard.project=a/b", "dashboard.project='a/b' is not allowed: a W&B project name"),
    case("dashboard", "+dashboard.foo=1", "dashboard.foo=1 is not allowed: a key of dashboard"),
    case("dashboard", "dashboard.dry_run=yes", "dashboard.dry_run='yes' is not allowed: true or false"),
    case("dashboard", "dashboard.workspace_url=wandb.ai/x", "dashboard.workspace_url='wandb.ai/x' is not allowed"),
    case("dashboard", "dashboard.dry_run=false", "vrs-dashboard saves to W&B and needs"),
    case("dashboard", "dashboard.out={file}", "dashboard.out='{file}' is not allowed: a new file, or an earlier "
                                              "vrs-dashboard spec to replace", in_task=True),
    # vrs-report on damaged rows of real results: one error naming file and line, whatever else is there
    *[case("report", f"report.inputs=[{{results}},{{{name}}}]", expect, in_task=True) for name, expect in {
        "radius_nan": "{radius_nan}/certify.tsv, line 3 is malformed (radius='nan' is not allowed: a finite number >= 0)",
        "radius_inf": "{radius_inf}/certify.tsv, line 2 is malformed (radius='inf' is not allowed",
        "radius_negative": "{radius_negative}/certify.tsv, line 4 is malformed (radius='-0.5' is not allowed",
        "idx_text": "{idx_text}/certify.tsv, line 2 is malformed (idx='x7' is not an integer)",
        "short_row": "{short_row}/certify.tsv, line 3 is malformed (6 fields, expected 7)",
        "twice_differing": "{twice_differing}/certify.tsv, lines 2 and 7: image ",
        "attack_l2_nan": "{attack_l2_nan}/attack.csv, line 2 is malformed (l2='nan' is out of range)",
        "attack_predict": "{attack_predict}/attack.csv, line 3 is malformed (adv_predict='-7' is out of range)",
        "attack_twice": "{attack_twice}/attack.csv, lines 2 and 5: image ",
    }.items()],
    # issue 23, class 1: an output folder that holds another app's results, another app's Hydra run, or a
    # training run that this run does not resume (vrs.utils.output_folders): refused before Hydra writes anything
    case("attack", "attack.out_dir={certify_out}", "attack.out_dir={certify_out} holds vrs-certify results "
                                                   "(certify.meta.json, certify.tsv); vrs-attack writes only into"),
    case("attack", "attack.out_dir={report_out}", "holds vrs-report results (report.csv, report.md)"),
    case("attack", "attack.out_dir={run}", "attack.out_dir={run} holds vrs-train results (checkpoints/last.ckpt"),
    case("attack", "hydra.run.dir={certify_out}", "paths.output_dir={certify_out} holds vrs-certify results"),
    case("certify", "certify.out_dir={attack_store}", "certify.out_dir={attack_store} holds vrs-attack results "
                                                      "(attack.csv, settings.json)"),
    case("certify", "certify.out_dir={report_out}", "holds vrs-report results"),
    case("certify", "certify.out_dir={run}", "holds vrs-train results"),
    case("certify", "hydra.run.dir={run}", "paths.output_dir={run} holds vrs-train results"),
    case("certify", "hydra.run.dir={train_hydra_run}", "paths.output_dir={train_hydra_run} is the run directory of a "
                                                       "vrs-train run (.hydra/)"),
    case("report", "report.out_dir={certify_out}", "report.out_dir={certify_out} holds vrs-certify results"),
    case("report", "report.out_dir={attack_store}", "holds vrs-attack results"),
    case("report", "report.out_dir={run}", "report.out_dir={run} holds vrs-train results"),
    case("report", "hydra.run.dir={certify_hydra_run}", "is the run directory of a vrs-certify run (.hydra/)"),
    # a report folder made from other inputs (its report.meta.json), as report.out_dir or as the run directory
    case("report", "report.out_dir={report_other}", "report.out_dir={report_other} holds the report of other inputs "
                                                    "(report.inputs=[/elsewhere/earlier_runs]); a report folder is "
                                                    "rewritten only by a report of the same inputs (a refresh): use "
                                                    "another report.out_dir for report.inputs=[{certify_out}]"),
    case("report", "report.out_dir=${{paths.output_dir}} hydra.run.dir={report_other}",
         "report.out_dir={report_other} holds the report of other inputs"),
    case("train", "hydra.run.dir={certify_out}", "paths.output_dir={certify_out} holds vrs-certify results"),
    case("train", "hydra.run.dir={attack_store}", "holds vrs-attack results"),
    case("train", "hydra.run.dir={report_out}", "holds vrs-report results"),
    case("train", "hydra.run.dir={certify_hydra_run}", "is the run directory of a vrs-certify run (.hydra/)"),
    case("train", "noise.sigma=0.5", "paths.output_dir={run} holds a vrs-train run (checkpoints/last.ckpt, "
                                     "csv/metrics.csv); vrs-train writes into an existing training run only to "
                                     "resume it"),
    case("train", "ckpt_path={ckpt} model.width=16 model.hidden=64", "ckpt_path={ckpt} is not one of its checkpoints"),
    case("train", "ckpt_path={run}/checkpoints/last.ckpt model.width=16 model.hidden=64",
         "holds a vrs-train run made with other settings (callbacks, data, logger, model, module, ... (15 keys) "
         "differ from its .hydra/config.yaml)"),
]
DAMAGED = ("radius_nan", "radius_inf", "radius_negative", "idx_text", "short_row", "twice_differing", "attack_l2_nan",
           "attack_predict", "attack_twice")


def key_of(arg: str) -> str:
    return arg.lstrip("+~").split("=", 1)[0]


def merged(base: list[str], extra: list[str]) -> list[str]:
    """base with extra's keys replaced (Hydra refuses a group given twice)."""
    keys = {key_of(a) for a in extra}
    return [a for a in base if key_of(a) not in keys] + extra


def snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(digits_ckpt, tmp_path_factory) -> dict:
    """Existing outputs of every app, bad checkpoints and stray paths; the base arguments per app."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "train_run"  # a finished vrs-train run directory, reused as hydra.run.dir
    for name, data in {".hydra/config.yaml": b"seed: 0\n", ".hydra/overrides.yaml": b"- data=digits\n",
                       "train.log": b"[log]\n", "csv/metrics.csv": b"epoch,val/acc\n0,0.9\n",
                       "checkpoints/last.ckpt": digits_ckpt.read_bytes()}.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    outs = {}
    # (attack_out holds no settings.json / attack.csv, so a valid config gets as far as choosing the images;
    # the corrupt_* directories hold damaged files of an earlier run.)
    for name, files in {"certify_out": ("certify.tsv", "certify.meta.json", "summary.json"),
                        "attack_out": ("summary.json", "robust_accuracy.png"), "report_out": ("report.md", "report.csv"),
                        "report_other": ("report.md", "report.csv"),  # + report.meta.json of other inputs (below)
                        "corrupt_certify": ("certify.tsv", "certify.meta.json"),
                        "corrupt_attack": ("attack.csv", "settings.json"),
                        "attack_store": ("attack.csv", "settings.json", "summary.json", "robust_accuracy.png"),
                        # Hydra run directories of other apps whose results went elsewhere (.hydra/ only)
                        "certify_hydra_run": (".hydra/config.yaml", ".hydra/overrides.yaml"),
                        "train_hydra_run": (".hydra/config.yaml", ".hydra/overrides.yaml")}.items():
        outs[name] = root / name
        outs[name].mkdir()
        for file in files:
            (outs[name] / file).parent.mkdir(exist_ok=True)
            (outs[name] / file).write_bytes(f"existing {file}\n".encode())
    (outs["report_other"] / "report.meta.json").write_text('{"inputs": ["/elsewhere/earlier_runs"]}\n')
    for name in ("certify", "train"):
        (outs[f"{name}_hydra_run"] / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    config_name: {name}\n")
    paths = {"tmp": root, "ckpt": digits_ckpt, "file": root / "a_file", "empty_dir": root / "empty_dir", "run": run,
             **{k: outs[k] for k in ("certify_out", "report_out", "report_other", "attack_store", "certify_hydra_run",
                                     "train_hydra_run")},
             "corrupt_certify": outs["corrupt_certify"], "corrupt_attack": outs["corrupt_attack"],
             "truncated": root / "truncated.ckpt", "garbage": root / "garbage.ckpt", "empty": root / "empty.ckpt"}
    paths.update(bad_checkpoints(digits_ckpt, root))
    paths.update(damaged_results(digits_ckpt, root))
    outs.update({name: paths[name] for name in ("results", *DAMAGED)})
    paths["file"].write_text("not a directory\n")
    paths["empty_dir"].mkdir()
    paths["truncated"].write_bytes(digits_ckpt.read_bytes()[:5000])
    paths["garbage"].write_bytes(b"\x00garbage" * 64)
    paths["empty"].write_bytes(b"")
    common = ["print_config=false", "logger=none"]
    base = {"train": ["data=digits", "trainer=cpu", "print_config=false", f"hydra.run.dir={run}"],
            "certify": ["data=digits", f"ckpt_path={digits_ckpt}", f"certify.out_dir={outs['certify_out']}", "certify.n=100",
                        "certify.n0=10", *common],
            "attack": ["data=digits", f"ckpt_path={digits_ckpt}", f"attack.out_dir={outs['attack_out']}", *common],
            "report": [f"report.inputs=[{outs['certify_out']}]", f"report.out_dir={outs['report_out']}"],
            "dashboard": ["dashboard.dry_run=true"]}
    return {"root": root, "run": run, "outs": [run, *outs.values()], "paths": paths, "base": base}


def bad_checkpoints(ckpt: Path, root: Path) -> dict[str, Path]:
    """The digits checkpoint with one NaN weight, with Inf in a bias, and with finite weights (the classifier
    scaled by 1e30) whose logits overflow to NaN."""
    import torch

    out = {}
    for name, change in {"nan_ckpt": ("net.1.features.0.weight", lambda w: w.view(-1)[0].fill_(float("nan"))),
                         "inf_ckpt": ("net.1.classifier.4.bias", lambda w: w[:2].fill_(float("inf"))),
                         "overflow_ckpt": ("net.1.classifier.1.weight", lambda w: w.mul_(1e30))}.items():
        c = torch.load(ckpt, map_location="cpu", weights_only=True)
        key, edit = change
        edit(c["state_dict"][key])
        if name == "overflow_ckpt":
            c["state_dict"]["net.1.classifier.4.weight"].mul_(1e30)
        out[name] = root / f"{name}.ckpt"
        torch.save(c, out[name])
    return out


def damaged_results(ckpt: Path, root: Path) -> dict[str, Path]:
    """Real vrs-certify and vrs-attack results of the digits checkpoint (a few images), and copies of them with
    one kind of damage each in certify.tsv or attack.csv."""
    from conftest import compose_config
    from vrs.apps.attack import run as attack
    from vrs.apps.certify import certify

    results = root / "results"
    cert, att = results / "certify", results / "attack"
    certify(compose_config(f"ckpt_path={ckpt}", "data=digits", "certify.n0=10", "certify.n=100", "certify.max=5",
                           "certify.progress=false", "logger=none", f"certify.out_dir={cert}", config_name="certify",
                           output_dir=cert))
    attack(compose_config(f"ckpt_path={ckpt}", "data=digits", "attack=pgd_l2", "attack.steps=1", "attack.eps=[0.5]",
                          "attack.max=3", "defense.m=1", "predict.n=20", "logger=none", f"attack.out_dir={att}",
                          config_name="attack", output_dir=att))

    def damaged(name: str, src: Path, table: str, edit) -> Path:
        where = root / "damaged" / name
        shutil.copytree(src, where)
        lines = (where / table).read_text().splitlines(keepends=True)
        sep = "\t" if table.endswith(".tsv") else ","
        header = lines[0].rstrip("\n").split(sep)
        rows = [ln.rstrip("\n").split(sep) for ln in lines[1:]]
        edit(header, rows)
        (where / table).write_text("".join(sep.join(r) + "\n" for r in [header, *rows]))
        return where

    def setter(line: int, column: str, value: str):
        def edit(header, rows):
            rows[line - 2][header.index(column)] = value
        return edit

    def again_differing(header, rows):
        rows.append(list(rows[0]))
        rows[-1][header.index("radius" if "radius" in header else "correct")] = "9.5" if "radius" in header else \
            str(1 - int(rows[0][header.index("correct")]))

    out = {"results": results}
    for name, line, column, value in (("radius_nan", 3, "radius", "nan"), ("radius_inf", 2, "radius", "inf"),
                                      ("radius_negative", 4, "radius", "-0.5"), ("idx_text", 2, "idx", "x7")):
        out[name] = damaged(name, cert, "certify.tsv", setter(line, column, value))
    out["short_row"] = damaged("short_row", cert, "certify.tsv", lambda h, rows: rows[1].pop())
    out["twice_differing"] = damaged("twice_differing", cert, "certify.tsv", again_differing)
    out["attack_l2_nan"] = damaged("attack_l2_nan", att, "attack.csv", setter(2, "l2", "nan"))
    out["attack_predict"] = damaged("attack_predict", att, "attack.csv", setter(3, "adv_predict", "-7"))
    out["attack_twice"] = damaged("attack_twice", att, "attack.csv", again_differing)
    return out


@pytest.mark.parametrize("c", CASES, ids=[f"{c.app}:{' '.join(c.args)}" for c in CASES])
def test_malformed_input_gives_one_line_and_changes_nothing(c, world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    fmt = {k: str(v) for k, v in world["paths"].items()}
    fresh_run = tmp_path / "hydra_run"
    base = world["base"][c.app] + ([] if c.app == "train" else [f"hydra.run.dir={fresh_run}"])
    argv = merged(base, [a.format(**fmt) for a in c.args])
    before = snapshot(*world["outs"])
    code, err = call_main(c.app, argv, capsys)
    line = one_error_line(code, err)
    assert c.expect.format(**fmt) in line, line
    assert snapshot(*world["outs"]) == before  # existing outputs byte-identical
    if not c.in_task:  # stopped before Hydra made (or wrote into) a run directory
        assert not fresh_run.exists()


# ---- multirun: every job is validated before the first one runs (and before the sweep directory exists) ----------
MULTIRUN_CASES = [
    case("train", "noise.sigma=0.25,-1", "noise.sigma=-1 is not allowed: a number > 0 (multirun job 1 of 2:"),
    case("train", "data=digits,foo", "data='foo' is not allowed: one of cifar10"),
    case("train", "noise=multi noise.sigma_min=0.1,0.5 noise.sigma_max=0.25", "noise.sigma_max=0.25 is not allowed"),
    case("train", "seed=0,1,4294967296", "seed=4294967296 is not allowed"),
    case("train", "data.val_size=100,0", "data.val_size=0 is not allowed"),
    case("train", "hparams_search=optuna hydra.sweeper.n_trials=2 data.batch_size=choice(4,0)",
         "data.batch_size=0 is not allowed"),
    case("certify", "certify.alpha=0.001,1.5", "certify.alpha=1.5 is not allowed: a number strictly between 0 and 1 (multirun job 1 of 2:"),
    case("attack", "defense.lam=0.5,2", "defense.lam=2 is not allowed"),
    case("certify", "certify.n=100,1.5", "certify.n=1.5 is not allowed: an integer (multirun job 1 of 2:"),
    case("report", "report.radii=[0.5],[-1]", "report.radii=[-1] is not allowed"),
]


@pytest.mark.parametrize("c", MULTIRUN_CASES, ids=[f"{c.app}:-m {' '.join(c.args)}" for c in MULTIRUN_CASES])
def test_a_bad_multirun_job_stops_the_sweep_before_any_job_runs(c, world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    fmt = {k: str(v) for k, v in world["paths"].items()}
    sweep = tmp_path / "sweep"
    base = [a for a in world["base"][c.app] if not a.startswith("hydra.run.dir=")]
    argv = ["-m", *merged(base, [a.format(**fmt) for a in c.args]), f"hydra.sweep.dir={sweep}",
            "hydra/job_logging=none", "hydra/hydra_logging=none"]
    before = snapshot(*world["outs"])
    code, err = call_main(c.app, argv, capsys)
    line = one_error_line(code, err)
    assert c.expect in line and "multirun job" in line, line
    assert snapshot(*world["outs"]) == before
    assert not sweep.exists() and not (tmp_path / "outputs").exists()  # no job ran, no sweep folder was made


def test_the_table_covers_every_app_with_thirty_cases_or_more():
    assert len(CASES) >= 30 and {c.app for c in CASES} == {"train", "certify", "attack", "report", "dashboard"}
    assert any("certify=vrs_c1" in c.args for c in CASES)


# ---- issue 23, class 2: results stores that a rerun finds; summaries describe the whole store, a refusal
# writes nothing -----------------------------------------------------------------------------------------------
STORE_ARGS = {"certify": ["certify.n0=10", "certify.n=100", "certify.max=6", "certify.progress=false"],
              "attack": ["attack=fgsm", "attack.eps=[0.5]", "attack.batch_size=4", "attack.max=4", "predict.n=100",
                         "defense.m=2"]}
STORE_FILES = {"certify": ("certify.tsv", "certify.meta.json", "summary.json", "certified_accuracy.png"),
               "attack": ("attack.csv", "settings.json", "summary.json", "robust_accuracy.png")}


def run_main(app: str, argv: list[str]) -> int | str | None:
    module = importlib.import_module(f"vrs.apps.{app}")
    GlobalHydra.instance().clear()
    old, sys.argv = sys.argv, [f"vrs-{app}", *argv]
    try:
        module.main()
        return 0
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = old


@pytest.fixture(scope="module")
def stores(world, tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """A finished vrs-certify store (6 images) and vrs-attack store (4 images), made by the apps' main:
    app -> (folder, the arguments that made it)."""
    root = tmp_path_factory.mktemp("stores")
    made = {}
    for app in ("certify", "attack"):
        out = root / app
        argv = merged(world["base"][app], [*STORE_ARGS[app], f"{app}.out_dir={out}", f"hydra.run.dir={root}/h_{app}"])
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VRS_ROOT", str(root))
            assert run_main(app, argv) == 0
        assert {p.name for p in out.iterdir()} >= set(STORE_FILES[app])
        made[app] = (out, argv)
    return made


def store_copy(stores, app: str, tmp_path: Path) -> tuple[Path, list[str]]:
    src, argv = stores[app]
    out = tmp_path / app
    shutil.copytree(src, out)
    return out, merged(argv, [f"{app}.out_dir={out}", f"hydra.run.dir={tmp_path}/h"])


def damage_row(text: str, line: int, column: int, value: str, sep: str) -> str:
    lines = text.splitlines(keepends=True)
    fields = lines[line].rstrip("\n").split(sep)
    fields[column] = value
    lines[line] = sep.join(fields) + "\n"
    return "".join(lines)


@pytest.mark.parametrize("app,extra,count", [("certify", ["certify.max=2"], 6), ("certify", ["certify.indices=[1,3]"], 6),
                                            ("attack", ["attack.max=2"], 4)])
def test_a_resume_with_nothing_to_do_describes_the_whole_store(stores, app, extra, count, tmp_path, capsys,
                                                               monkeypatch):
    """Rerun into a finished store with fewer images: the table is untouched, and summary.json (and the plot,
    drawn from the same rows) still describe every row of it, with this run's subset under subset.this_run."""
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    out, argv = store_copy(stores, app, tmp_path)
    table = STORE_FILES[app][0]
    before = (out / table).read_bytes()
    code, err = call_main(app, merged(argv, extra), capsys)
    assert code == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (out / table).read_bytes() == before
    assert summary["subset"]["count"] == count and summary["subset"]["this_run"]["count"] == 2
    assert f"every image in {table} ({count})" in summary["subset"]["rule"]
    if app == "certify":
        assert summary["num_images"] == count == summary["rows_in_file"] and summary["images_this_run"] == 0
    else:
        assert summary["clean"]["n"] == count and [p["n"] for p in summary["per_eps"]] == [count]
        assert summary["complete"] is True


REFUSED = [  # (app, how the store is damaged or the rerun differs, extra arguments, the error line)
    ("certify", "label", ["certify.max=2"], "has label {label} for image 4, the data now says"),
    ("certify", "garbage", [], "certify.tsv, line 4 is malformed"),
    ("certify", "torn", ["certify.n=200"], "already holds results made with other settings (n: existing 100, now 200)"),
    ("attack", "garbage", [], "attack.csv, line 3 is malformed (invalid literal for int()"),
    ("attack", "torn", ["predict.n=120"], "already holds results made with other settings (predict.n: existing 100, now 120)"),
    ("attack", "no_settings", [], "holds attack.csv rows but no settings.json, so their settings are unknown"),
]


@pytest.mark.parametrize("app,damage,extra,expect", REFUSED, ids=[f"{a}:{d}:{' '.join(e)}" for a, d, e, _ in REFUSED])
def test_a_refused_resume_writes_nothing(stores, app, damage, extra, expect, tmp_path, capsys, monkeypatch):
    """A rerun refused by the store (a row of other data, a damaged row, other settings, rows of unknown
    settings): one error line, exit 2, and every file of the store byte-identical: no settings file written,
    no torn line cut, no summary or plot rewritten."""
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    out, argv = store_copy(stores, app, tmp_path)
    table, sidecar = STORE_FILES[app][:2]
    sep = "\t" if app == "certify" else ","
    text = (out / table).read_text()
    if damage == "label":  # image 4's label (beyond this run's 2 images), as if the data set had changed; a torn line
        label = "7" if text.splitlines()[5].split(sep)[1] != "7" else "3"
        text = damage_row(text, 5, 1, label, sep)
        (out / table).write_text(text + text.splitlines(keepends=True)[1][:9])
        expect = expect.format(label=label)
    elif damage == "garbage":
        (out / table).write_text(damage_row(text, 3 if app == "certify" else 2, 4, "abc", sep))
    elif damage == "torn":  # a killed writer's half line: cut only by a run that goes ahead
        (out / table).write_text(text + text.splitlines(keepends=True)[1][:9])
    elif damage == "no_settings":
        (out / sidecar).unlink()
        (out / table).write_text(damage_row(text, 2, 4, "abc", sep))
    before = snapshot(out)
    code, err = call_main(app, merged(argv, extra), capsys)
    assert expect in one_error_line(code, err)
    assert snapshot(out) == before


RUN_DIR_CASES = [  # (app, extra arguments, the error line or None: the run goes ahead)
    ("certify", ["certify.n=200"], "already holds results made with other settings (n: existing 100, now 200)"),
    ("certify", ["certify.indices=[5000]"], "certify.indices=[5000] is not allowed"),
    ("attack", ["predict.n=120"], "already holds results made with other settings (predict.n: existing 100, now 120)"),
    ("certify", [], None),
]


@pytest.mark.parametrize("app,extra,expect", RUN_DIR_CASES, ids=[f"{a}:{' '.join(e)}" for a, e, _ in RUN_DIR_CASES])
def test_a_refusal_in_its_own_run_directory_leaves_hydras_files(stores, app, extra, expect, tmp_path, capsys,
                                                                monkeypatch):
    """The store in the run directory (out_dir unset, hydra.run.dir=<an earlier run of the app>): the store's
    settings (from the checkpoint) or the app refuse only once it runs, after Hydra rewrote .hydra/*.yaml and
    appended to the log; those are put back, so the folder stays byte-identical. A run the store takes keeps
    Hydra's new files."""
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    src, argv = stores[app]
    run = tmp_path / "run"
    shutil.copytree(src.parent / f"h_{app}", run)  # an earlier run directory (.hydra/, <app>.log) ...
    for f in src.iterdir():  # ... holding its store
        shutil.copy(f, run / f.name)
    argv = merged(argv, [f"{app}.out_dir=null", f"hydra.run.dir={run}", *extra])
    before = snapshot(run)
    code, err = call_main(app, argv, capsys)
    if expect is None:
        assert code == 0, err[-3000:]
        assert f"{app}.out_dir=null" in (run / ".hydra" / "overrides.yaml").read_text()
        return
    assert expect in one_error_line(code, err)
    assert snapshot(run) == before


def test_a_training_run_resumes_in_its_own_folder_and_only_so(tmp_path, capsys, monkeypatch):
    """vrs-train into its own run folder: the resume of docs/reliability.md (the same command plus ckpt_path and
    hydra.run.dir) goes ahead; the same folder without ckpt_path, or with other settings, is refused untouched."""
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    run = tmp_path / "run"
    argv = ["data=digits", "model.width=8", "model.hidden=16", "debug=limit", "trainer.max_epochs=1", "test=false",
            "optimized_metric=null",  # a resume of a finished run logs no metric
            "trainer=cpu", "print_config=false", "~callbacks.progress_bar", f"hydra.run.dir={run}"]
    assert run_main("train", argv) == 0
    resume = [*argv, f"ckpt_path={run}/checkpoints/last.ckpt"]
    for extra, expect in ((argv, "holds a vrs-train run (checkpoints/"),
                          ([*resume, "seed=5"], "made with other settings (seed differ")):
        before = snapshot(run)
        assert expect in one_error_line(*call_main("train", extra, capsys))
        assert snapshot(run) == before
    code, err = call_main("train", resume, capsys)
    assert code == 0, err[-3000:]


# ---- as real console processes (exit code and stderr of the process itself); test_train.py,
# test_certify_app.py and test_attacks_app.py run more of them ------------------------------------------------
@pytest.mark.slow  # two app processes
def test_real_processes(world, tmp_path):
    runs = {"train": ["data=digits", "noise.sigma=-1", f"hydra.run.dir={world['run']}"],
            "certify": merged(world["base"]["certify"], ["certify.alpha=2", f"hydra.run.dir={tmp_path}/r"])}
    expect = {"train": "error: noise.sigma=-1 is not allowed: a number > 0", "certify": "certify.alpha=2"}
    before = snapshot(*world["outs"])
    procs = {app: subprocess.Popen(app_command(app, *args), cwd=REPO_ROOT, env=app_env(tmp_path, OMP_NUM_THREADS="1"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for app, args in runs.items()}
    for app, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert expect[app] in one_error_line(proc.returncode, err), err
    assert snapshot(*world["outs"]) == before
    assert not (tmp_path / "r").exists()


# ---- a read-only output directory -----------------------------------------------------------------------------
@contextlib.contextmanager
def unprivileged():
    """As root, permission bits do not stop writes: run the block with the effective ids of `nobody`."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_read_only_output_dir(world, capsys, monkeypatch):
    top = Path(tempfile.mkdtemp(prefix="vrs-ro-"))  # under /tmp: reachable for `nobody`, unlike pytest's tmp_path
    try:
        top.chmod(0o755)
        writable, ro = top / "writable", top / "ro"
        writable.mkdir(mode=0o777)
        writable.chmod(0o777)
        ro.mkdir()
        (ro / "certify.tsv").write_text("idx\tlabel\n")
        ro.chmod(0o555)
        with unprivileged():
            try:
                (ro / "probe").write_text("x")
                blocked = False
            except PermissionError:
                blocked = True
        if not blocked:
            (ro / "probe").unlink()
            pytest.skip("this user can write into a 0555 directory (and cannot switch to `nobody`)")
        monkeypatch.setenv("VRS_ROOT", str(writable))
        before = snapshot(ro)
        certify_args = merged(world["base"]["certify"], [f"certify.out_dir={ro}", f"hydra.run.dir={writable}/c"])
        with unprivileged():
            certify = call_main("certify", certify_args, capsys)
            train = call_main("train", ["data=digits", f"hydra.run.dir={ro}/run"], capsys)
        assert "certify.out_dir=" in (line := one_error_line(*certify)) and "a writable directory" in line, line
        assert "Permission denied" in line
        assert "paths.output_dir=" in (line := one_error_line(*train)) and "a writable directory" in line, line
        assert snapshot(ro) == before and not (writable / "c").exists()
    finally:
        (top / "ro").chmod(0o755)
        shutil.rmtree(top)


# ---- W&B trouble: continue offline with a warning ---------------------------------------------------------------
def _wandb_env(monkeypatch, tmp_path, key: str, url: str) -> None:
    for name in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no settings of the machine
    monkeypatch.setenv("WANDB_MODE", "")  # unset below, but recorded: the logger's fallback sets it, and
    monkeypatch.delenv("WANDB_MODE")      # monkeypatch puts the original state back afterwards


def _offline_run(tmp_path, caplog, warning: str):
    import wandb

    from vrs.utils.loggers import finish_wandb, wandb_logger

    wandb.teardown()  # a fresh W&B session, as in a new process (an earlier one keeps its settings)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="vrs.utils.loggers"):
        logger = wandb_logger(str(tmp_path / "run"), project="vrs-test")
        logger.log_metrics({"x": 1.0})
    finish_wandb()
    assert logger.experiment.settings.mode in ("offline", "dryrun")  # wandb calls offline runs "dryrun"
    assert any(warning in r.getMessage() and "continuing offline" in r.getMessage() for r in caplog.records), \
        caplog.text
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "no offline run files"
    return time.perf_counter() - start


def test_wandb_unreachable_continues_offline(tmp_path, monkeypatch, caplog):
    with socket.socket() as s:  # a port nobody listens on: connection refused, no network needed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _wandb_env(monkeypatch, tmp_path, "a" * 40, f"http://127.0.0.1:{port}")
    seconds = _offline_run(tmp_path, caplog, f"127.0.0.1:{port} is unreachable")
    assert seconds < 60  # not wandb's 90 s of retries


def test_wandb_invalid_key_continues_offline(tmp_path, monkeypatch, caplog):
    with socket.socket() as server:  # a server that accepts connections, so only the key is wrong
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        _wandb_env(monkeypatch, tmp_path, "too-short-key", f"http://127.0.0.1:{server.getsockname()[1]}")
        _offline_run(tmp_path, caplog, "W&B online logging failed (WANDB_API_KEY invalid")


# ---- not errors, but said: a warning line, exit code 0, and what was asked for is done ----------------------
def test_warnings_name_the_problem(world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    runs = {  # app, extra arguments, the warning
        "sigma_down": ("attack", ["attack=sigma_down", "attack.max=1", "attack.steps=1", "attack.eot=1", "predict.n=20",
                                  "defense.m=1", f"attack.out_dir={tmp_path}/a"],
                       "attack=sigma_down on a fixed-sigma defence (sigma=0.25"),
        "grid": ("certify", ["certify.radius_grid=[1.0,0.25]", "certify.max=1", f"certify.out_dir={tmp_path}/c"],
                 "certify.radius_grid=[1.0, 0.25] is not sorted: using [0.25, 1.0]"),
    }
    before = snapshot(*world["outs"])
    for name, (app, extra, warning) in runs.items():
        argv = merged(world["base"][app], [*extra, f"hydra.run.dir={tmp_path}/h_{name}"])
        code, _ = call_main(app, argv, capsys)
        out = capsys.readouterr()
        log = (tmp_path / f"h_{name}" / f"{app}.log").read_text()  # Hydra's log file of the run
        assert code == 0 and warning in log, (name, log[-2000:], out.err[-2000:])
    assert snapshot(*world["outs"]) == before


def test_repeated_result_rows_count_once_with_a_note(world, tmp_path):
    """certify.tsv / attack.csv with rows repeated (two copies of a file concatenated): the same table as
    without the repeats, a note in the row and a warning; repeats that disagree are refused (CASES)."""
    from conftest import compose_config
    from vrs.apps.report import build_report

    src = world["paths"]["results"]
    twice = tmp_path / "twice"
    shutil.copytree(src, twice)
    for table in (twice / "certify" / "certify.tsv", twice / "attack" / "attack.csv"):
        lines = table.read_text().splitlines(keepends=True)
        table.write_text("".join(lines + lines[1:]))

    def report(inputs, out):
        return build_report(compose_config(f"report.inputs=[{inputs}]", f"report.out_dir={out}",
                                           config_name="report", output_dir=out))

    once, repeated = report(src, tmp_path / "r1"), report(twice, tmp_path / "r2")
    drop = ("notes", "run_dirs", "config")
    assert [{k: v for k, v in r.items() if k not in drop} for r in repeated.records] == \
        [{k: v for k, v in r.items() if k not in drop} for r in once.records]
    notes = " ".join(str(r.get("notes")) for r in repeated.records)
    assert "certify.tsv: 5 repeated row(s) (line 7, 8, 9, 10, 11) counted once" in notes, notes
    assert "attack.csv: 3 repeated row(s) (line 5, 6, 7) counted once" in notes, notes
