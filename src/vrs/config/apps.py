"""Each app's top-level keys (conf/<app>.yaml outside its nodes), typed. The top level also holds the app's nodes
(data, certify, ...), typed on their own: these classes are not closed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrs.config.rules import BOOL, CKPT_PATH, DEVICE, SEED, TEXT, Checked, Rule, either, key, list_of, number, optional


@dataclass(kw_only=True)
class Top(Checked):
    """The keys every app may hold (vrs-dashboard has only task_name)."""

    CLOSED = False  # the top level holds the app's nodes too

    seed: int = key(SEED, absent_ok=True)
    task_name: str = key(TEXT, absent_ok=True)
    tags: Any = key(list_of(either(TEXT, number()), nonempty=False), absent_ok=True)
    print_config: bool = key(BOOL, absent_ok=True)


@dataclass(kw_only=True)
class TrainTop(Top):
    test: bool = key(BOOL, absent_ok=True)
    optimized_metric: str | None = key(optional(TEXT), absent_ok=True)
    ckpt_path: str | None = key(optional(CKPT_PATH, " (a new run)"), absent_ok=True)
    base_ckpt: str | None = key(optional(CKPT_PATH, " (stage 1 trains one)"), absent_ok=True)


@dataclass(kw_only=True)
class CertifyTop(Top):
    ckpt_path: str | None = key(CKPT_PATH, absent_ok=True)


@dataclass(kw_only=True)
class AttackTop(CertifyTop):
    device: str = key(DEVICE, absent_ok=True)
    allow_other_dataset: bool = key(BOOL, absent_ok=True)


@dataclass(kw_only=True)
class ImportTop(Top):
    ckpt_path: str = key(Rule(lambda v: isinstance(v, str) and v != "", "the path of a published checkpoint "
                              "(e.g. checkpoint.pth.tar of locuslab/smoothing)"))
    out_path: str = key(TEXT)


TOPS: dict[str, type[Top]] = {"train": TrainTop, "certify": CertifyTop, "attack": AttackTop, "report": Top,
                              "dashboard": Top, "import": ImportTop}
