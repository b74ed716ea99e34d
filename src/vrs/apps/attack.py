"""vrs-attack: empirical robustness of a smoothed classifier (fixed sigma or VRS) under attack.

    vrs-attack ckpt_path=<run>/checkpoints/last.ckpt attack=pgd_l2 attack.eps=0.5 attack.max=8
    vrs-attack ckpt_path=<vrs ckpt> attack=sigma_down attack.eps=[0.25,0.5,1.0] defense.lam=0.5
    vrs-attack ckpt_path=<vrs ckpt> defense.sigma=0.25 ...     # fixed-sigma smoothing, same base classifier
    vrs-attack ckpt_path=... attack.out_dir=<an earlier one>   # resume it (same settings; new eps allowed)
    vrs-attack ckpt_path=... attack.world_size=4               # 4 processes (GPUs), one merged attack.csv
    torchrun --nproc_per_node 4 -m vrs.apps.attack ckpt_path=... attack.out_dir=...  # the same via torchrun

Each attacked image (at every eps) is classified by PREDICT (n, alpha; an abstention counts as an error)
at the noise level the defence deploys at the adversarial input, and by the soft classifier the attack
differentiated. Outputs in attack.out_dir (default: the Hydra run directory):
  attack.csv            one row per (image, eps), appended and fsynced as it goes (resumable);
  summary.json          robust accuracy per eps, abstain rate, clean accuracy, settings (atomic);
  settings.json         what a resumed run must match;
  robust_accuracy.png   accuracy against eps.
The same metrics go to every configured logger (logger=wandb: W&B, with the plot).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vrs.apps import CONFIG_DIR
from vrs.utils.output_folders import APP_FILES
from vrs.apps.results import SHARED_KEYS, ResultsStore, Table, select_indices, store_subset
from vrs.apps.skeleton import Ranks, load_data, log_results, open_store, resolve_device, run_app, run_ranks
from vrs.config import to_typed
from vrs.config.attack import DefenseConfig, PredictConfig
from vrs.config_schema import check_values
from vrs.errors import VRSError, hydra_errors_exit, user_errors_exit
from vrs.utils.config import plain
from vrs.utils.io import format_value, save_figure
from vrs.utils import metric_names as names

log = logging.getLogger(__name__)

# Settings a resumed run must share with the run it continues (eps and the subset may grow).
RESUME_KEYS = SHARED_KEYS + ("attack", "defense", "predict")
SUBSET_KEYS = ("eps", "skip", "max", "indices", "batch_size", "world_size", "out_dir")


# ---- model ---------------------------------------------------------------------------------------
def load_defense(cfg: DictConfig, device):
    """(DefendedModel, base network, LoadedCheckpoint, description) from ckpt_path and the defense config.

    A classifier checkpoint (vrs-train) is smoothed at defense.sigma, or at its training sigma when that
    was fixed. A VRS checkpoint uses its selector (median-smoothed, snapped to its grid) at defense.lam,
    unless defense.sigma is set: then its base classifier is smoothed at that fixed sigma (the baseline
    with the same base classifier).
    """
    # deferred here and below: vrs.attacks, vrs.checkpoint and vrs.data load torch (and Lightning), which
    # vrs-attack --help and config errors do not need
    from hydra.utils import instantiate  # deferred: only a sigma search needs it

    from vrs.attacks.defended import DefendedModel, SearchSigma, SelectorSigma  # deferred: torch
    from vrs.checkpoint import load_checkpoint  # deferred: torch

    loaded = load_checkpoint(cfg.ckpt_path, kinds=("classifier", "vrs"))
    d: DefenseConfig = to_typed(cfg.defense, DefenseConfig)  # checked (vrs.config.attack)
    common = dict(m=d.m, noise=d.noise, tau=d.tau, max_batch=d.max_batch, precision=d.precision, seed=int(cfg.seed))
    smoothing = d.selector_smoothing
    if cfg.get("sigma_search"):  # vrs.config.certify.check_sigma_search refused a fixed sigma beside it
        method = instantiate(plain(cfg.sigma_search))
        surrogate_cfg = d.search_surrogate or None
        surrogate = instantiate({**plain(cfg.sigma_search), **surrogate_cfg}) if surrogate_cfg else None
        network = loaded.vrs_model(device).base if loaded.kind == "vrs" else loaded.network
        network = network.to(device).eval()
        model = DefendedModel(network, SearchSigma(method, network, surrogate), **common)
        info = {"kind": loaded.kind, "defense": method.to_dict()["name"], "sigma_search": method.to_dict(),
                "certificate": method.certificate,
                "search_surrogate": surrogate.to_dict() if surrogate else "the deployed search"}
        info.update(noise=d.noise, m=d.m)
        return model.to(device), network, loaded, info
    if loaded.kind == "vrs":
        vrs = loaded.vrs_model(device)
        if d.sigma is not None:
            model = DefendedModel(vrs.base, d.sigma, **common)
            info = {"kind": "vrs", "defense": "fixed_sigma", "sigma": d.sigma}
        else:
            lam = d.lam
            n_dep = d.deployed_n_h or vrs.median.n_h
            if smoothing == "vote":  # Dual RS: the majority vote over the grid at sigma_e = the selector's sigma_h
                from vrs.selection.vote import vote_sigma  # deferred: torch

                if not vrs.median.grid:
                    raise VRSError("defense.selector_smoothing=vote needs the checkpoint's sigma grid (the vote is "
                                   "over grid cells); this selector has none: use defense.selector_smoothing=median")

                def deployed(x):
                    return vote_sigma(vrs.selector, x, lam, vrs.median.sigma_h, n_dep, vrs.median.grid,
                                      vrs.median.batch_size)
            else:
                def deployed(x):
                    return vrs.sigma(x, lam, n_h=n_dep)
            sel = SelectorSigma(vrs.selector, lam, vrs.sigma_min, vrs.sigma_max, n_h=int(d.n_h),
                                sigma_h=vrs.median.sigma_h, grad=d.selector_grad, grid=vrs.median.grid,
                                deployed=deployed, smoothing=smoothing)
            model = DefendedModel(vrs.base, sel, **common)
            info = {"kind": "vrs", "defense": "vrs", "lam": lam, "sigma_range": [vrs.sigma_min, vrs.sigma_max],
                    "median": vrs.median.to_dict(), "deployed_n_h": n_dep, "attack_n_h": d.n_h,
                    "selector_grad": d.selector_grad, "selector_smoothing": smoothing}
    else:
        if smoothing != "median":
            raise VRSError(f"defense.selector_smoothing={smoothing} needs a VRS selector checkpoint (it smooths the "
                           f"selector); {cfg.ckpt_path} is a base classifier: leave defense.selector_smoothing=median")
        sigma = loaded.smoothing_sigma(d.sigma, "defense.sigma")
        model = DefendedModel(loaded.network, sigma, **common)
        info = {"kind": "classifier", "defense": "fixed_sigma", "sigma": float(sigma)}
    info["noise"] = d.noise
    info["m"] = int(d.m)
    return model.to(device), loaded.network.to(device), loaded, info


# ---- outputs -------------------------------------------------------------------------------------
def plot_robust_accuracy(summary: dict, path: Path, title: str) -> None:
    import matplotlib  # deferred: heavy, and only the end of a run plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = sorted(summary["per_eps"], key=lambda p: p["eps"])
    clean = summary["clean"].get("acc")
    if not per or per[0]["eps"] > 0:  # the clean accuracy is the curve's value at eps = 0
        per = [{"eps": 0.0, "robust_acc": clean, "soft_acc": summary["clean"].get("soft_acc")}] + per
    eps = [p["eps"] for p in per]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(eps, [p["robust_acc"] for p in per], "o-", label="PREDICT (abstain = wrong)")
    ax.plot(eps, [p["soft_acc"] for p in per], "s--", label="soft classifier")
    if clean == clean:  # not NaN
        ax.axhline(clean, color="grey", lw=0.8, ls=":", label=f"clean PREDICT ({clean:.3f})")
    ax.set_xlabel("eps")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def metric_dict(summary: dict, attack_name: str) -> dict[str, float]:
    """Flat metrics for loggers, in the robust/ namespace shared with the training callbacks (docs/wandb.md):
    robust/acc@<attack>_<eps>, robust/soft_acc@..., robust/abstain@..., robust/clean_acc, robust/clean_soft_acc,
    robust/clean_abstain, and the defence's robust/sigma (fixed sigma) or robust/lam (VRS) as a plot axis."""
    clean = summary["clean"]
    out = {names.ROBUST_CLEAN_ACC: clean["acc"], names.ROBUST_CLEAN_ABSTAIN: clean["abstain_rate"],
           names.ROBUST_CLEAN_SOFT_ACC: clean["soft_acc"]}
    out.update({names.robust(k): summary["defense"][k] for k in ("sigma", "lam") if k in summary["defense"]})
    for p in summary["per_eps"]:
        out[names.robust_acc(attack_name, p["eps"])] = p["robust_acc"]
        out[names.robust_soft_acc(attack_name, p["eps"])] = p["soft_acc"]
        out[names.robust_abstain(attack_name, p["eps"])] = p["abstain_rate"]
    return {k: float(v) for k, v in out.items() if v == v}


def run_facts(summary: dict) -> dict:
    """W&B tags of this run (vrs.utils.loggers.run_tags): data, method (a fixed sigma is Cohen's smoothing,
    also on a VRS checkpoint's base classifier), sigma or lambda, and the attack."""
    info = summary["defense"]
    method = (info["defense"] if "sigma_search" in info else "dual_rs" if info.get("selector_smoothing") == "vote"
              else "vrs" if info["defense"] == "vrs" else "cohen")
    return {"data": summary["settings"]["data"], "method": method,
            "sigma": info.get("sigma"), "lam": info.get("lam"), "attack": summary["attack"]}


# ---- the run -------------------------------------------------------------------------------------
def results_table() -> Table:
    """attack.csv: one row per (image, eps), appended as it goes (vrs.apps.results), settings in settings.json."""
    from vrs.attacks.evaluate import ROW_COLUMNS  # deferred: it imports torch (vrs-attack --help stays fast)

    name, sidecar = APP_FILES["vrs-attack"]  # attack.csv, settings.json
    return Table(app="vrs-attack", out_key="attack.out_dir", name=name, sidecar=sidecar, columns=tuple(ROW_COLUMNS),
                 delimiter=",", key=("idx", "eps"), match=RESUME_KEYS, check_row=check_row)


INT_COLUMNS = ("idx", "label", "clean_predict", "adv_predict", "correct", "soft_predict", "soft_correct",
               "clean_soft_predict")


def check_row(row: dict[str, str]) -> None:
    """ValueError unless every value of an attack.csv row is a number (integers where the column holds them):
    a damaged row is refused when the store is opened, before anything is written."""
    for column, value in row.items():
        if column in INT_COLUMNS:
            int(value)
        else:
            float(value)


def batches_of(indices: list[int], batch_size: int) -> list[list[int]]:
    """`indices` in batches as a one-process run forms them; the skeleton hands every world-th batch to a rank
    (skeleton.run_ranks), so every image is attacked with the same seeds (from the run seed, the batch's first
    image and eps: evaluate.attack_batch_runs) whatever the number of processes."""
    return [indices[s:s + batch_size] for s in range(0, len(indices), batch_size)]


def _device(cfg: DictConfig, rank: int, world: int):
    import torch  # deferred: torch stays off vrs-attack's start-up path

    from vrs.utils.device import shard_device  # deferred: torch

    return torch.device(shard_device(resolve_device(str(cfg.get("device", "auto")), "device"), rank, world))


def _prepare(cfg: DictConfig, device):
    """(model, base, loaded, info, images, labels, PREDICT function): what every process needs."""
    import torch  # deferred: torch stays off vrs-attack's start-up path

    from vrs.attacks.evaluate import smoothed_predict_fn  # deferred: torch

    torch.manual_seed(int(cfg.seed))
    model, base, loaded, info = load_defense(cfg, device)
    xs, ys, _ = load_data(plain(cfg.data), cfg.attack.get("split", "test"))
    p: PredictConfig = to_typed(cfg.predict, PredictConfig)  # checked (vrs.config.attack)
    predict = smoothed_predict_fn(base, loaded.num_classes, p.n, p.alpha, p.batch_size, seed=int(cfg.seed),
                                  precision=p.precision, source=str(cfg.ckpt_path))
    return model, base, loaded, info, xs, ys, predict


def _attack_batches(cfg: DictConfig, batches: list[list[int]], done: set, writer, device, prepared,
                    total: int, t0: float) -> None:
    """Attack `batches` at every eps, appending the rows not in `done` to `writer`."""
    import torch  # deferred: torch stays off vrs-attack's start-up path

    from vrs.attacks.evaluate import attack_batch_runs  # deferred: torch
    from vrs.attacks.factory import eps_list  # deferred: torch
    from vrs.data.datamodule import to_float  # deferred: Lightning

    model, _, loaded, _, xs, ys, predict = prepared
    attack_cfg = plain(cfg.attack)
    eps_values = eps_list(attack_cfg)
    for n_batch, idx in enumerate(batches, start=1):
        todo = [e for e in eps_values if any(writer.key_of({"idx": i, "eps": e}) not in done for i in idx)]
        if not todo:
            continue
        sel = torch.as_tensor(idx)
        x = to_float(xs[sel]).to(device)
        y = ys[sel].to(device)
        # seeded from (run seed, first image of the batch, eps): the same rows whatever the number of processes
        for rows in attack_batch_runs(model, x, y, idx, [(attack_cfg, e, ()) for e in todo], loaded.num_classes,
                                      predict, int(cfg.seed), (idx[0],)):
            writer.write([r for r in rows if writer.key_of(r) not in done])
        log.info("%d/%d batches of %d images (%.1f s)", n_batch, len(batches), total, time.perf_counter() - t0)


def _attack_worker(cfg_dict: dict, batches: list[list[int]], done: set, rank: int, world: int, shard: str,
                   total: int) -> None:
    """Entry point of a spawned shard process (attack.world_size > 1)."""
    logging.basicConfig(level=logging.WARNING)
    cfg = OmegaConf.create(cfg_dict)
    device = _device(cfg, rank, world)
    with results_table().writer(Path(shard)) as writer:
        _attack_batches(cfg, batches, done, writer, device, _prepare(cfg, device), total, time.perf_counter())


def run(cfg: DictConfig) -> dict:
    """Attack, classify, write; returns the summary (also in summary.json); {} on torchrun ranks > 0.

    attack.world_size = k > 1 spawns k - 1 more processes (one per GPU, or CPU processes); under torchrun
    (WORLD_SIZE > 1) every rank takes part. Process r attacks every k-th batch into attack.rank<r>.csv;
    rank 0 merges the shards into attack.csv, so the rows are those of a one-process run.
    """
    check_values(cfg, "attack")  # every key, before anything is loaded or written
    import torch  # deferred: torch stays off vrs-attack's start-up path

    from vrs.attacks.evaluate import summarize  # deferred: torch
    from vrs.attacks.factory import eps_list  # deferred: torch
    from vrs.checkpoint import check_data_matches  # deferred: torch
    from vrs.modules.training import training_name  # deferred: torch

    attack_cfg = plain(cfg.attack)
    ranks = Ranks.start(int(attack_cfg.get("world_size", 1)))
    eps_values = eps_list(attack_cfg)
    name = attack_cfg["name"]

    device = _device(cfg, ranks.local_rank, ranks.world)
    prepared = _prepare(cfg, device)
    model, base, loaded, info, xs, ys, _ = prepared
    data_cfg = plain(cfg.data)
    check_data_matches(loaded, data_cfg, allow_other_dataset=bool(cfg.get("allow_other_dataset", False)))
    if name == "sigma_down" and "sigma" in info and ranks.main:
        log.warning("attack=sigma_down on a fixed-sigma defence (sigma=%g, %s): it has no selector to push down, "
                    "so its sigma term is constant and the attack is EOT-PGD (attack=eot_pgd) under another name",
                    info["sigma"], cfg.ckpt_path)
    split = attack_cfg.get("split", "test")
    attack_settings = {k: v for k, v in attack_cfg.items() if k not in SUBSET_KEYS}
    settings = {"checkpoint": str(Path(cfg.ckpt_path).resolve()), "checkpoint_sha256": loaded.sha256,
                "training": training_name(loaded.base_spec.get("training")),  # the base classifier's training method
                "data": data_cfg.get("name"), "split": split, "attack": attack_settings,
                "defense": plain(cfg.defense), "predict": plain(cfg.predict), "seed": int(cfg.seed)}
    skip, max_images = int(attack_cfg.get("skip", 1)), attack_cfg.get("max")
    indices = select_indices(len(ys), split, "attack", skip, max_images, attack_cfg.get("indices"))
    bs = int(attack_cfg.get("batch_size", 32))
    position = {str(i): n for n, i in enumerate(indices)}

    def one_process_order(row: dict) -> tuple:  # batch by batch, eps by eps, image by image
        n = position.get(row["idx"], len(indices))
        return n // bs, float(row["eps"]), n

    out = Path(ranks.from_main(str(attack_cfg.get("out_dir") or cfg.paths.output_dir)))
    store = ResultsStore(out, results_table(), settings)
    done = open_store(ranks, store)
    resumed = len(done)
    todo = [b for b in batches_of(indices, bs)
            if any(writer_key(i, e) not in done for i in b for e in eps_values)]
    t0 = time.perf_counter()
    if ranks.main:
        log.info("attack %s (%s) eps=%s on %d %s images of %s; defense %s; %d rows already done; %d process(es)",
                 name, attack_cfg.get("norm"), eps_values, len(indices), split, data_cfg.get("name"), info, resumed,
                 ranks.world)

    def work(batches: list[list[int]], rank: int, table: Path) -> None:
        with results_table().writer(table) as writer:
            _attack_batches(cfg, batches, done, writer, device, prepared, len(indices), t0)

    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    rows = run_ranks(ranks, todo, store, work, _attack_worker,
                     lambda r, mine: (cfg_dict, mine, done, r, ranks.world, str(store.shard_path(r)), len(indices)),
                     "vrs-attack", order=one_process_order)
    if not ranks.main:
        ranks.close()
        return {}
    try:
        # The summary and the plot describe every row of attack.csv (every image at every eps it holds), not
        # only this run's subset and eps (issue 23: a resume that found nothing to do rewrote them for less).
        stored = sorted({int(r["idx"]) for r in rows.values()})
        earlier = {float(r["eps"]) for r in rows.values()}  # this run's eps first (the sweep objective), then the rest
        all_eps = [float(e) for e in eps_values] + sorted(e for e in earlier if not any(
            math.isclose(e, float(v), rel_tol=1e-5, abs_tol=1e-9) for v in eps_values))
        summary = summarize(list(rows.values()), all_eps)
        summary.update({
            "attack": name, "norm": attack_cfg.get("norm"), "eps": all_eps,
            "complete": all(p["n"] == len(stored) for p in summary["per_eps"]),
            "subset": store_subset(stored, indices, split, len(ys), store.table.name, skip, max_images,
                                   attack_cfg.get("indices")),
            "defense": info, "device": str(device), "world_size": ranks.world, "torch": torch.__version__,
            "seconds": round(time.perf_counter() - t0, 2), "rows_resumed": resumed,
            "note": "robust_acc: PREDICT on the adversarial input over ALL attacked images; an abstention (-1) "
                    "counts as wrong. soft_acc: argmax of the soft-smoothed classifier the attack differentiated.",
            "settings": settings, "config": OmegaConf.to_container(cfg, resolve=True),
        })
        store.write_summary(summary)
        what = (f"sigma={info['sigma']:g}" if "sigma" in info else info["defense"] if "sigma_search" in info
                else f"VRS ({info.get('selector_smoothing', 'median')}) lambda={info.get('lam')}")
        plot = out / "robust_accuracy.png"
        plot_robust_accuracy(summary, plot, f"{name} ({attack_cfg.get('norm')}) vs {what}, m={info['m']}")
    finally:
        store.unlock()
        ranks.close()
    log_results(cfg, run_facts(summary), metric_dict(summary, name), {names.ROBUST_PLOT: plot})
    return summary


def writer_key(idx: int, eps: float) -> tuple[str, str]:
    """The (idx, eps) key of a row as attack.csv writes it (vrs.utils.io.RowWriter.key_of)."""
    return (format_value(int(idx)), format_value(float(eps)))


def print_results(summary: dict, cfg: DictConfig) -> float | None:
    """The run's headline numbers; returns the sweep objective (robust accuracy at the first eps)."""
    print(f"Results: {Path(cfg.attack.get('out_dir') or cfg.paths.output_dir)}")
    print(f"  clean: PREDICT acc {summary['clean']['acc']:.4f} (abstain {summary['clean']['abstain_rate']:.4f}), "
          f"soft acc {summary['clean']['soft_acc']:.4f}, {summary['clean']['n']} images")
    for p in summary["per_eps"]:
        print(f"  {summary['attack']} eps={p['eps']:g}: robust acc {p['robust_acc']:.4f} "
              f"(abstain {p['abstain_rate']:.4f}), soft acc {p['soft_acc']:.4f}")
    return summary["per_eps"][0]["robust_acc"] if summary["per_eps"] else None


@hydra_errors_exit
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="attack")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    return run_app(cfg, "attack", run, print_results, order=("attack", "defense", "predict", "data"))


if __name__ == "__main__":
    main()
