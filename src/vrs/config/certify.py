"""vrs-certify's options (the certify group: conf/certify/*.yaml), typed.

CertifyConfig is certify=cohen (Cohen et al.'s CERTIFY / PREDICT, and the speed and sharding settings);
VRSCertifyConfig adds the VRS / Dual RS certificate's keys (certify=vrs_c1 | vrs_c2 | dual_rs). The values live in
the yaml files; these classes say what each key may be. vrs-certify runs on OmegaConf.to_object(cfg.certify).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrs.config.rules import (AUTO_BOOL, BOOL, COMPILE, DEVICE, INDICES, LAMBDA, PROBABILITY, SPLIT, TEXT, Checked,
                              either, integer, key, list_of, number, one_of, optional)
from vrs.errors import VRSError, check
from vrs.utils.config import construct


@dataclass
class CertifyConfig(Checked):
    NODE = "certify"

    mode: str = key(one_of("certify", "predict"))
    # n0 <= n, alpha in (0, 1), batch_size >= 1: vrs.smoothing.smoothed.check_sampling, in __post_init__
    n0: int = key(None)  # vrs.apps.certify.resolve_options sets None for PREDICT (no selection samples)
    n: int = key(None)
    alpha: float = key(None)
    batch_size: Any = key(either(one_of("auto"), integer(1)))  # auto: vrs.apps.certify.resolve_options
    sigma: float | None = key(optional(number(gt=0), " (the checkpoint's training sigma)"))
    split: str = key(SPLIT)
    skip: int = key(integer(1))
    max: int | None = key(optional(integer(1), " (all images)"))
    indices: Any = key(optional(either(integer(0), INDICES)))  # one index or a list of them
    out_dir: str | None = key(optional(TEXT, " (the run directory)"))
    device: str = key(DEVICE)
    precision: str = key(one_of("auto", "fp32", "tf32", "bf16", "fp16"))
    channels_last: Any = key(AUTO_BOOL)
    compile: Any = key(COMPILE)
    fused_blocks: Any = key(AUTO_BOOL)
    fold_batchnorm: Any = key(AUTO_BOOL)
    images_per_group: Any = key(either(one_of("auto"), integer(1)))
    noise_block: int = key(integer(1))
    world_size: int = key(integer(1))
    # how many samples: README "Fewer samples", docs/method.md section 1a; sound: vrs.smoothing.lattice
    sampling: str = key(one_of("fixed", "sequential", "radius_target"))
    radii: Any = key(optional(list_of(number(ge=0), distinct=True), " (radius_target needs a list)"))
    looks: int = key(integer(1, 30))
    radius_tol: float = key(number(gt=0))
    sound: bool = key(BOOL)
    # Any, not List[float]: an error shows the radii as given ([1, 1.0] is two radii 1); core.radius_grid sorts them
    radius_grid: Any = key(list_of(number(ge=0), distinct=True))
    allow_other_dataset: bool = key(BOOL)
    progress: bool = key(BOOL)

    def __post_init__(self) -> None:
        super().__post_init__()
        from vrs.smoothing.smoothed import check_sampling  # deferred: torch, off the apps' start-up path

        batch = 1 if self.batch_size == "auto" else self.batch_size  # auto is resolved per device
        check_sampling(self.n, self.alpha, batch, n0=self.n0 if self.mode == "certify" else None,
                       prefix="certify.")
        if self.sampling != "fixed":
            check(self.mode == "certify", "certify.sampling", self.sampling,
                  "fixed with certify.mode=predict (looks are for CERTIFY)")
        if self.sampling == "radius_target":
            check(bool(self.radii), "certify.radii", self.radii,
                  "a non-empty list of target radii >= 0 with certify.sampling=radius_target")


@dataclass
class VRSCertifyConfig(CertifyConfig):
    """certify=vrs_c1 | vrs_c2 | dual_rs. Null: the checkpoint's median-smoothing setting (module.median)."""

    certificate: str = key(one_of("c1", "c2", "dual_rs"))
    selector_smoothing: str = key(one_of("median", "vote"))
    lam: float = key(LAMBDA)
    n_h0: int | None = key(optional(integer(1), " (the checkpoint's)"))
    n_h: int | None = key(optional(integer(1), " (the checkpoint's)"))
    alpha_h: float | None = key(optional(PROBABILITY, " (the checkpoint's)"))
    sigma_h: float | None = key(optional(number(gt=0), " (the checkpoint's)"))
    grid: Any = key(either(one_of("checkpoint", None), list_of(number(gt=0))))  # checkpoint | null | noise levels
    selector_batch_size: int | None = key(optional(integer(1), " (the checkpoint's)"))
    c2_tol: float = key(number(gt=0))

    def __post_init__(self) -> None:
        super().__post_init__()
        vote = self.selector_smoothing == "vote"  # median: c1 / c2; vote: dual_rs
        check((self.certificate == "dual_rs") == vote, "certify.certificate", self.certificate,
              f"{'dual_rs' if vote else 'c1 or c2'} with certify.selector_smoothing={self.selector_smoothing} "
              "(median: certify=vrs_c1 / vrs_c2; vote: certify=dual_rs)")
        check(self.mode == "certify", "certify.mode", self.mode,
              "certify with certify=vrs_c1 / vrs_c2 (PREDICT of a VRS model is not part of vrs-certify)")
        check(not self.sound, "certify.sound", self.sound,
              f"false with certify.certificate={self.certificate!r}: the selector's own smoothing samples float "
              "noise, which the sound lattice argument does not cover (docs/method.md section 1a)")


def check_sigma_search(cfg: dict, app: str) -> None:
    """The sigma_search node beside certify (vrs-certify) or defense (vrs-attack): the search built with its settings
(Multiscale / DataDependentSmoothing check their own; vrs-attack's defense.search_surrogate too), and as it chooses
sigma itself by a test-time search: no fixed sigma, no VRS certificate, no PREDICT beside it."""
    construct(cfg["sigma_search"])
    surrogate = (cfg.get("defense") or {}).get("search_surrogate") if app == "attack" else None
    if surrogate:
        construct({**cfg["sigma_search"], **surrogate})
    name = str(cfg["sigma_search"].get("_target_", "?.?")).split(".")[-2]
    node = cfg["certify"] if app == "certify" else cfg["defense"]
    prefix = "certify" if app == "certify" else "defense"
    check(node.get("sigma") is None, f"{prefix}.sigma", node.get("sigma"),
          f"null with sigma_search={name} (the search chooses sigma per image)")
    if app == "certify":
        if "certificate" in node:
            raise VRSError(f"sigma_search={name} chooses sigma by a test-time search: use it with certify=cohen, not "
                           f"certify.certificate={node['certificate']!r}")
        check(node.get("mode", "certify") == "certify", "certify.mode", node.get("mode"),
              f"certify with sigma_search={name} (its PREDICT is not part of vrs-certify)")
        check(node.get("sampling", "fixed") == "fixed", "certify.sampling", node.get("sampling"),
              f"fixed with sigma_search={name} (the search runs its own CERTIFY calls)")
        check(not node.get("sound"), "certify.sound", node.get("sound"),
              f"false with sigma_search={name} (a per-image sigma search is not covered by the lattice argument)")
