"""The names of the logged metrics, in one place: the modules, callbacks and apps log with these, and
vrs-dashboard (vrs.apps.dashboard) builds its W&B panels from them, so a renamed metric renames its panels.

One namespace across the apps (docs/wandb.md, "Metric names"):

    train/<name>, val/<name>, test/<name>   vrs-train: stage_key(stage, name); acc_sigma, lam_key
    cert/<name>                             vrs-certify, and the training callback: cert_acc(r), cert(name)
    robust/<name>                           vrs-attack, and the training callback: robust_acc(attack, eps), ...
    diagnostics/<name>                      the VRS selector at the end of fitting

Float parts are written with `:g` (0.5 -> "0.5", 1.0 -> "1"), as every app always has.
"""

from __future__ import annotations

import re

# What a float written with `:g` looks like (0.5, 1, 1e-05): the variable part of a family of keys.
G_NUMBER = r"[0-9.e+-]+"

# ---- vrs-train ------------------------------------------------------------------------------------------
TRAIN, VAL, TEST = "train", "val", "test"
EPOCH = "epoch"  # Lightning logs the epoch with every row: the x axis of the training plots

LOSS, ACC, ACC_CLEAN = "loss", "acc", "acc_clean"
SIGMA_MEAN, KL = "sigma_mean", "kl"  # the VRS selector: mean chosen sigma, KL to the prior

# The learning rate as LearningRateMonitor logs it: the scheduler's name (vrs.modules.optim). Without a
# scheduler the monitor names it lr-<Optimizer> itself.
LR = "train/lr"


def stage_key(stage: str, name: str) -> str:
    """train/loss, val/acc, test/acc_clean, ..."""
    return f"{stage}/{name}"


def acc_sigma(stage: str, sigma: float) -> str:
    """A multi-sigma base classifier's accuracy under noise of one sigma of its grid: val/acc_sigma_0.25."""
    return f"{stage}/acc_sigma_{sigma:g}"


def lam_key(stage: str, name: str, lam: float) -> str:
    """A VRS selector's metric at one lambda: val/acc_lam0.5, val/sigma_mean_lam0.5, val/kl_lam0.5."""
    return f"{stage}/{name}_lam{lam:g}"


def acc_sigma_pattern(stage: str) -> str:
    """The regular expression of every acc_sigma(stage, sigma) key: val/acc_sigma_<s>."""
    return re.escape(f"{stage}/acc_sigma_") + G_NUMBER


def lam_key_pattern(stage: str, name: str) -> str:
    """The regular expression of every lam_key(stage, name, lam) key: val/acc_lam<l>."""
    return re.escape(f"{stage}/{name}_lam") + G_NUMBER


# ---- defences evaluated side by side (the training callbacks) ---------------------------------------------
def sigma_suffix(sigma: float) -> str:
    """The ending of a callback metric when several sigmas are evaluated: cert/acr_sigma0.25."""
    return f"_sigma{sigma:g}"


def lam_suffix(lam: float) -> str:
    """The ending of a callback metric when several lambdas are evaluated: cert/acr_lam0.5."""
    return f"_lam{lam:g}"


# ---- vrs-certify (cert/) ------------------------------------------------------------------------------------
CERT = "cert"


def cert(name: str) -> str:
    """cert/acr, cert/abstain, cert/clean_acc, cert/sigma, cert/lam, ..."""
    return f"{CERT}/{name}"


def cert_acc(radius: float, suffix: str = "") -> str:
    """Certified accuracy at radius r (abstentions wrong, every image in the denominator): cert/acc@0.5."""
    return f"{CERT}/acc@{float(radius):g}{suffix}"


CERT_ACR, CERT_ABSTAIN, CERT_CLEAN_ACC = cert("acr"), cert("abstain"), cert("clean_acc")
CERT_SIGMA, CERT_LAM = cert("sigma"), cert("lam")  # the defence: a fixed sigma, or VRS's lambda (plot axes)
CERT_SECONDS_PER_IMAGE = cert("seconds_per_image")
CERT_TABLE = cert("table")                           # media: certify.tsv's rows (a W&B table)
CERT_PLOT = cert("certified_accuracy")               # media: the certified accuracy curve


# ---- vrs-attack (robust/) -----------------------------------------------------------------------------------
ROBUST = "robust"


def robust(name: str) -> str:
    """robust/clean_acc, robust/clean_abstain, robust/sigma, robust/lam, ..."""
    return f"{ROBUST}/{name}"


def attack_tag(attack: str, eps: float, suffix: str = "") -> str:
    """An attack at one budget: pgd_l2_0.5."""
    return f"{attack}_{float(eps):g}{suffix}"


def robust_acc(attack: str, eps: float, suffix: str = "") -> str:
    """PREDICT on the adversarial input (abstain = wrong): robust/acc@pgd_l2_0.5."""
    return f"{ROBUST}/acc@{attack_tag(attack, eps, suffix)}"


def robust_soft_acc(attack: str, eps: float, suffix: str = "") -> str:
    """The soft-smoothed classifier's accuracy on the adversarial input: robust/soft_acc@pgd_l2_0.5."""
    return f"{ROBUST}/soft_acc@{attack_tag(attack, eps, suffix)}"


def robust_abstain(attack: str, eps: float) -> str:
    """PREDICT's abstention rate on the adversarial input: robust/abstain@pgd_l2_0.5."""
    return f"{ROBUST}/abstain@{attack_tag(attack, eps)}"


ROBUST_CLEAN_ACC, ROBUST_CLEAN_SOFT_ACC = robust("clean_acc"), robust("clean_soft_acc")  # PREDICT / soft, clean input
ROBUST_CLEAN_ABSTAIN = robust("clean_abstain")
ROBUST_SIGMA, ROBUST_LAM = robust("sigma"), robust("lam")
ROBUST_PLOT = robust("accuracy_vs_eps")              # media: robust accuracy against eps


# ---- the VRS selector's diagnostics (diagnostics/) -----------------------------------------------------------
SELECTOR_FIGURES = "diagnostics/selector"            # media: sigma histograms, sigma against lambda


def sigma_spread_prefix(lam: float) -> str:
    """The prefix of the chosen sigma's spread at one lambda: diagnostics/sigma_lam0.5/<statistic>."""
    return f"diagnostics/sigma_lam{lam:g}/"
