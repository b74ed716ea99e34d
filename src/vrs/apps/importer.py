"""vrs-import: a base classifier published by another randomized-smoothing codebase (vrs.importers.codebases:
locuslab/smoothing, SmoothAdv, MACER, Consistency, SmoothMix) -> a checkpoint of this project.

    vrs-import ckpt_path=<their checkpoint.pth.tar> source.format=cohen source.sigma=0.25 data=cifar10 [out_path=...]

The file's `arch` picks the network (conf/model/<network>.yaml) and the data set it must be built for (data=...);
its weights are mapped onto the network name by name, the codebase's normalisation becomes the network's first
layer, and the result is written (atomically, never over an existing file) as kind "classifier" with the
provenance in checkpoint["vrs"]["imported"]. It is then read back with vrs.checkpoint, the reader of every app.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vrs.apps import CONFIG_DIR
from vrs.apps.skeleton import run_app
from vrs.errors import VRSError, hydra_errors_exit, user_errors_exit
from vrs.utils.io import atomic_path

log = logging.getLogger(__name__)

_NOISE_IN_PATH = re.compile(r"noise_(\d+(?:\.\d+)?)")  # the anchors' folders: .../noise_0.25/checkpoint.pth.tar


def network_config(model: str, data: dict) -> dict:
    """conf/model/<model>.yaml resolved against the data config (its ${data.*} entries)."""
    path = Path(CONFIG_DIR) / "model" / f"{model}.yaml"
    node = OmegaConf.create({"data": data, "model": OmegaConf.load(path)})
    return OmegaConf.to_container(node, resolve=True)["model"]


def check_sigma_against_path(path: str, sigma: float) -> None:
    """A warning when the anchors' folder name (noise_<sigma>) says another training sigma than source.sigma."""
    said = _NOISE_IN_PATH.findall(Path(path).as_posix())
    if said and abs(float(said[-1]) - sigma) > 1e-9:
        log.warning("source.sigma=%g, but the path says noise_%s: the published models were trained with the "
                    "sigma of their folder", sigma, said[-1])


def run(cfg: DictConfig) -> dict:
    """Read, map, write, read back; returns the summary."""
    import torch  # deferred: torch stays off vrs-import's start-up path (config errors come first and fast)

    from vrs.checkpoint import load_checkpoint  # deferred: torch
    from vrs.importers.convert import imported_checkpoint, read_published, resolve_normalization  # deferred: torch

    data = OmegaConf.to_container(cfg.data, resolve=True)
    source = cfg.source
    published = read_published(cfg.ckpt_path, source.format)
    arch = published.arch
    if data["name"] != arch.dataset:
        raise VRSError(f"{cfg.ckpt_path}: arch {published.arch_name!r} of {published.codebase.repository} is a "
                       f"network for data={arch.dataset}, not data={data['name']}: pass data={arch.dataset}")
    sigma = float(source.sigma)
    check_sigma_against_path(str(cfg.ckpt_path), sigma)
    normalization = resolve_normalization(published, source.normalization)
    network = f"{arch.model} (conf/model/{arch.model}.yaml)"
    ckpt = imported_checkpoint(published, network_config(arch.model, data), data, sigma, normalization, network)
    out = Path(cfg.out_path)
    if out.exists():  # checked with the config too; a file that appeared since is not replaced either
        raise VRSError(f"out_path={out} exists: vrs-import never replaces a file; pass another out_path")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # renamed to out_path only once the reader of every app accepts it
        torch.save(ckpt, tmp)
        loaded = load_checkpoint(tmp)  # what vrs-certify / vrs-attack / module.base_ckpt will read
    info = ckpt["vrs"]["imported"]
    log.info("imported %s (%s, arch %s, epoch %s) -> %s: %s, normalisation %s (mean %s, std %s; from %s), sigma %g",
             published.path, info["repository"], info["arch"], info["epoch"], out, network, info["normalization"],
             info["mean"], info["std"], info["normalization_from"], sigma)
    return {"out_path": str(out), "sha256": loaded.sha256, "data": data["name"], "network": network,
            "parameters": sum(p.numel() for p in loaded.network.parameters()), **info}


def print_results(summary: dict, cfg: DictConfig) -> None:
    print(f"Wrote {summary['out_path']}: {summary['network']}, {summary['parameters']:,} parameters, "
          f"normalisation {summary['normalization']} (mean {summary['mean']}, std {summary['std']}), "
          f"sigma {summary['sigma']:g}, from {summary['repository']} arch {summary['arch']}")
    if summary["filled_counters"]:
        print(f"  {summary['filled_counters']} BatchNorm num_batches_tracked counters were absent (older PyTorch) "
              "and set to 0; evaluation does not read them")
    print(f"  certify: vrs-certify ckpt_path={summary['out_path']} data={summary['data']}")


@hydra_errors_exit
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="import")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    run_app(cfg, "import", run, print_results, order=("ckpt_path", "source", "data", "out_path"))


if __name__ == "__main__":
    main()
