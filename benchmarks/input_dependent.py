"""Issue 18: every input-dependent smoothing method on one frontier, each with its certificate.

    python benchmarks/input_dependent.py --size smoke --out /tmp/idm                       # digits, < 1 minute
    python benchmarks/input_dependent.py --size gpu --out $OUT/idm --data-root .device-data/fashion-mnist \\
        --time-budget 520                                                                  # H100, one device call
    python benchmarks/input_dependent.py --size cpu --estimate                             # the issue's CPU size
    python benchmarks/input_dependent.py --size cpu --dry-run                              # + commands, configs checked

One base classifier (multi-sigma, `experiment=multi_fmnist`: the LeNet, or the cpu size's MLP), and on it:
  fixed sigma    vrs-certify certify=cohen / vrs-attack defense.sigma=S at each grid sigma
  VRS            a selector trained with `--vrs-objective` (default oracle_labels: the same labels as Dual RS, so VRS
                 against Dual RS compares the selector smoothing, median against vote), certify=vrs_c1 at each lambda
  Dual RS        experiment=dual_rs_fmnist (oracle_labels estimator at sigma_e = 1.0), certify=dual_rs at each lambda,
                 attacked with defense.selector_smoothing=vote
  Multiscale     sigma_search=multiscale (sound cascade certificate)
  DDS            sigma_search=dds (an empirical defence: attacked, certified radius 0)
Every defence is attacked with EOT-PGD (attack=eot_pgd, L2, the config's budget unless the size says otherwise) and
scored by PREDICT (abstain = wrong); vrs-report puts them on one frontier (report/report.md, frontier.csv).

Each step runs the app in this process (no process start-up: the smoke size fits a minute) into its own folder
under --out and writes `.done` there when it finishes; a rerun skips finished steps, and vrs-certify / vrs-attack
resume row by row in an unfinished folder (a step cut off by the device's time limit continues where it stopped).
experiment.json records the commands (as overrides), sizes, seeds, the machine and the wall time of every step.
Exit code 0: complete; 3: stopped by --time-budget (rerun to continue); 1: a step failed.

Sizes (--size):
  smoke  data=digits, tiny networks (8 + 4 + 4 training batches), sigmas {0.25, 0.5}, lambda 0.5, eps 0.5,
         8 images, n = 100, DDS 5 steps: tests the script.
  cpu    the issue's CPU size, sized for under an hour on 2 quiet cores (--estimate: ~30 minutes): Fashion-MNIST;
         the base classifier an MLP (`model=mlp`, 784-256-256-10: ~7x the noisy samples/s of the width-8 LeNet
         at about its accuracy under noise, docs/results.md) trained multi-sigma on all 55,000 training images for 5
         epochs; the VRS selector and Dual RS's estimator SelectorCNNs of width 8, 5 epochs on 10,000 training
         images, their oracle labels from 32 votes per (image, grid sigma); sigmas {0.12, 0.25, 0.5, 1.0}, lambda
         {0, 0.25, 0.5, 0.75, 1}; certification of 200 test images (every 50th) at n0 = 100, n = 10,000,
         alpha = 0.001 (VRS / Dual RS: the checkpoints' n_h0 = 64 + n_h = 1,000 selector draws, alpha_h = 0.001);
         EOT-PGD L2 at eps {0.5, 1.0} on 500 test images (every 20th), 10 steps x 1 EOT draw of m = 4 noisy copies
         (issue 19's cpu budget), PREDICT n = 100 (VRS / Dual RS: the deployed sigma from 100 selector draws,
         `defense.deployed_n_h`); Multiscale and DDS at their configs (DDS: 100-step search, 10 in the attack's
         forward passes, `defense.search_surrogate`). The estimate counts every step's noisy samples at the rates
         of benchmarks/vrs_frontier.py's RATES["cpu-mlp"] (measured by benchmarks/cpu_unit_rates.py).
  gpu    the issue's GPU size (trainer=gpu, bf16 attacks): the width-32 LeNet (30 epochs), selectors of width 16
         (20 epochs), the eot_pgd budget (20 steps x 8 EOT, m = 8), PREDICT n = 1,000, the cpu size's grid, images
         and certification; in device calls: benchmarks/gpu/input_dependent.sh.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared runner and vrs_frontier's experiment pieces
import vrs_frontier as vf
from experiment_runner import SEED, Step, clean_json, eps_list, print_estimate, run_steps


@dataclass(frozen=True)
class Size:
    name: str
    data: tuple[str, ...]
    trainer: tuple[str, ...]
    base: tuple[str, ...]            # extra overrides of stage 1
    selector: tuple[str, ...]        # extra overrides of both selector runs (VRS, Dual RS)
    sigmas: tuple[float, ...]
    lams: tuple[float, ...]
    eps: tuple[float, ...]
    cert_images: tuple[int, int]     # (skip, max) of the test split
    attack_images: tuple[int, int]
    n0: int
    n: int
    alpha: float
    n_h: int | None                  # selector estimation draws in certification (None: the checkpoint's)
    steps: int | None                # EOT-PGD budget (None: the eot_pgd config's)
    eot: int | None
    m: int
    predict_n: int
    attack_batch: int
    precision: str
    search: tuple[str, ...] = ()     # extra overrides of DDS's search
    search_batch: int | None = None  # noisy images per forward pass of both searches (None: their configs')
    dds_surrogate: int | None = None  # DDS steps in the attack's forward passes (None: the deployed search's)
    deployed_n_h: int | None = None  # selector draws of the deployed sigma in PREDICT (None: the checkpoint's)
    device: str = "cpu"              # the rates of vf.RATES the estimate uses
    # for the count-based estimate (rates with unit costs, vf.RATES["cpu-mlp"]): training images x epochs of the
    # base and of each selector, and the oracle labels' votes per (training image, grid sigma)
    base_work: int = 0
    selector_work: int = 0
    label_votes: tuple[int, int] = (0, 0)  # (training images, votes)


FMNIST = ("data=fashion_mnist",)
SIZES = {
    "smoke": Size("smoke", data=("data=digits",), trainer=("trainer=cpu",),
                  base=("model.width=8", "model.hidden=32", "trainer.max_epochs=1", "test=false",
                        "+trainer.limit_train_batches=8", "+trainer.limit_val_batches=1"),
                  selector=("trainer.max_epochs=1", "test=false", "+trainer.limit_train_batches=4",
                            "+trainer.limit_val_batches=1", "module.n_trf=2", "module.val_n_h=2",
                            "module.val_lams=[0.0,1.0]",
                            "module.median.n_h0=8", "module.median.n_h=64", "module.diagnostics.enabled=false",
                            "selector.net.width=8", "objective.votes=8"),
                  sigmas=(0.25, 0.5), lams=(0.5,), eps=(0.5,), cert_images=(10, 8), attack_images=(10, 8), n0=10,
                  n=100, alpha=0.001, n_h=32, steps=1, eot=1, m=2, predict_n=20, attack_batch=8, precision="fp32",
                  search=("sigma_search.steps=5", "sigma_search.draws=4")),
    "cpu": Size("cpu", data=FMNIST, trainer=("trainer=cpu",),
                base=("model=mlp", "trainer.max_epochs=5"),
                selector=("data.train_subset=10000", "trainer.max_epochs=5", "+trainer.limit_val_batches=2",
                          "selector.net.width=8", "objective.votes=32"),
                sigmas=(0.12, 0.25, 0.5, 1.0), lams=(0.0, 0.25, 0.5, 0.75, 1.0), eps=(0.5, 1.0),
                cert_images=(50, 200), attack_images=(20, 500), n0=100, n=10_000, alpha=0.001, n_h=None, steps=10,
                eot=1, m=4, predict_n=100, attack_batch=100, precision="fp32", dds_surrogate=10, deployed_n_h=100,
                device="cpu-mlp", base_work=55_000 * 5, selector_work=10_000 * 5, label_votes=(10_000, 32)),
}
# the GPU size: the width-32 LeNet, 30 + 20 epochs, the eot_pgd budget (20 steps x 8 EOT, m = 8), PREDICT at
# n = 1,000, the checkpoints' selector draws
SIZES["gpu"] = replace(SIZES["cpu"], name="gpu", trainer=("trainer=gpu",), base=(), selector=(), steps=None,
                       eot=None, m=8, predict_n=1000, attack_batch=250, precision="bf16", search_batch=8192,
                       deployed_n_h=None, device="h100")
METHODS = ("fixed", "vrs", "dual_rs", "multiscale", "dds")


GRID = (0.12, 0.25, 0.5, 1.0)  # the selectors' and Multiscale's grid (conf/module/selector.yaml, sigma_search)
MULTISCALE_LEVELS = 2.5        # levels Multiscale certifies on average (of 4; an image stops at the first that holds;
#                                the cpu size's MLP stopped at ~1.1 on 24 images: docs/performance.md)
DDS_STEPS = 100                # conf/sigma_search/dds.yaml's steps (of 8 draws each)


def unit_seconds(size: Size, r: dict, point: str, kind: str) -> float:
    """Seconds one image (kind "cert") or one (image, eps) (kind "attack") of a frontier point costs, from the size's
    sample counts and the unit rates r (vf.RATES["cpu-mlp"]: seconds per noisy sample of the base classifier's
    forward `fwd`, forward + backward `grad`, and the selector's `sel_fwd`, `sel_grad`).
    cert:   n0 + n base forwards; VRS / Dual RS add n_h0 + n_h selector draws (64 + 1,000, the checkpoint's);
            Multiscale certifies MULTISCALE_LEVELS levels; DDS adds its search, one image at a time (dds_step a step).
    attack: steps x eot gradients of m noisy copies (VRS / Dual RS: and of defense.n_h = 8 selector copies;
            Multiscale: its stopping rule, len(grid) x n_predict forwards, in every pass; DDS: the surrogate search),
            then PREDICT on the clean and the adversarial input (predict_n forwards, plus the deployed sigma:
            deployed_n_h selector draws, the stopping rule, or the deployed search)."""
    family = point.split("_")[0] if point.startswith(("vrs", "dual")) else point
    family = "selector" if family in ("vrs", "dual") else ("fixed" if point.startswith("fixed") else family)
    dds_grads = DDS_STEPS * 8                                 # conf/sigma_search/dds.yaml: steps x draws
    stop_rule = len(GRID) * 100 * r["fwd"]                   # conf/sigma_search/multiscale.yaml: n_predict = 100
    if kind == "cert":
        base = (size.n0 + size.n) * r["fwd"]
        return {"fixed": base, "selector": base + (64 + (size.n_h or 1000)) * r["sel_fwd"],
                "multiscale": MULTISCALE_LEVELS * base, "dds": base + DDS_STEPS * r["dds_step"]}[family]
    passes = (size.steps or 20) * (size.eot or 8)
    grads = passes * size.m * r["grad"]
    predict = size.predict_n * r["fwd"]
    surrogate = (size.dds_surrogate or 100) * 8 * r["grad"]
    per_input = {"fixed": (grads, predict),
                 "selector": (grads + passes * 8 * r["sel_grad"], predict + (size.deployed_n_h or 1064) * r["sel_fwd"]),
                 "multiscale": (grads + passes * stop_rule, predict + stop_rule),
                 "dds": (grads + passes * surrogate, predict + dds_grads * r["grad"])}[family]
    return per_input[0] + 2 * per_input[1]  # the attack, and PREDICT on the clean and the adversarial input


def app_step(name: str, app: str, overrides: list[str], folder: Path, estimate_s: float) -> Step:
    """A step that runs vrs-<app> with these overrides in this process (`run_step`)."""
    return Step(name, "", app, overrides, folder, estimate_s)


def build_steps(size: Size, out: Path, data_root: str | None, vrs_objective: str,
                methods: tuple[str, ...] = METHODS) -> list[Step]:
    r = vf.RATES[size.device]
    data = list(size.data) + ([f"data.root={data_root}"] if data_root else [])
    common = data + [f"seed={SEED}", "print_config=false"]  # training keeps its CSV log (metrics.csv)
    quiet_app = common + ["logger=none"]
    tr = out / "train"
    base_ckpt = tr / "base" / "checkpoints" / "last.ckpt"
    scale = 0.02 if size.name == "smoke" else 1.0
    quiet = ["~callbacks.progress_bar"]
    counted = "fwd" in r  # unit rates (seconds per sample): count the samples of every step
    steps = [app_step("train/base", "train", ["experiment=multi_fmnist", *size.trainer, *common, *quiet, *size.base],
                  tr / "base", r["start"] + size.base_work * r["train"] if counted else r["base"] * scale)]
    selectors = {}
    if "vrs" in methods:
        selectors["vrs"] = ["experiment=vrs_fmnist", *vf.OBJECTIVE_RUNS[vrs_objective]]
    if "dual_rs" in methods:
        selectors["dual_rs"] = ["experiment=dual_rs_fmnist"]
    for i, (name, pre) in enumerate(selectors.items()):
        # the oracle labels are computed once for the base classifier (the first selector), then read from the cache
        labels = size.label_votes[0] * size.label_votes[1] * len(GRID) * r.get("fwd", 0.0) if i == 0 else 0.0
        est = r["start"] + size.selector_work * r["sel_train"] + labels if counted else r["selector"] * scale
        steps.append(app_step(f"train/{name}", "train", [*pre, f"base_ckpt={base_ckpt}", *size.trainer, *common, *quiet,
                                                      *size.selector], tr / name, est))
    skip, mx = size.cert_images
    cert = ["certify.split=test", f"certify.skip={skip}", f"certify.max={mx}", f"certify.n0={size.n0}",
            f"certify.n={size.n}", f"certify.alpha={size.alpha}", "certify.progress=false", *quiet_app]
    cert_sel = [f"certify.n_h={size.n_h}"] if size.n_h else []
    askip, amx = size.attack_images
    atk = ["attack=eot_pgd", "attack.norm=l2", "attack.split=test", f"attack.skip={askip}", f"attack.max={amx}",
           f"attack.eps={eps_list(size.eps)}", f"attack.batch_size={size.attack_batch}", f"defense.m={size.m}",
           f"defense.precision={size.precision}", f"predict.n={size.predict_n}", *quiet_app]
    atk += [f"attack.steps={size.steps}"] if size.steps else []
    atk += [f"attack.eot={size.eot}"] if size.eot else []
    atk_sel = [f"defense.deployed_n_h={size.deployed_n_h}"] if size.deployed_n_h else []
    one_cert = one_atk = 0.0
    if not counted:  # rates per image (the GPU's, and the older CPU table's); the costs relative to fixed sigma below
        one_cert = r["start"] + mx * (size.n + size.n0) * r["cert_sample"]
        one_atk = r["start"] + len(size.eps) * amx * (r["atk_vrs_fixed"] + (size.steps or 20) * (size.eot or 8)
                                                       * size.m / 8 * r["atk_vrs_grad"])
    points: list[tuple[str, Path, list[str], list[str], float]] = []  # (name, ckpt, certify args, attack args, cost)
    if "fixed" in methods:
        for s in size.sigmas:
            points.append((f"fixed_{s:g}", base_ckpt, [f"certify.sigma={s}"], [f"defense.sigma={s}"], 1.0))
    for name in ("vrs", "dual_rs"):
        if name not in methods:
            continue
        ckpt = tr / name / "checkpoints" / "last.ckpt"
        certificate = "certify=vrs_c1" if name == "vrs" else "certify=dual_rs"
        smoothing = "median" if name == "vrs" else "vote"
        for lam in size.lams:
            points.append((f"{name}_{lam:g}", ckpt, [certificate, f"certify.lam={lam}", *cert_sel],
                           [f"defense.lam={lam}", f"defense.selector_smoothing={smoothing}", *atk_sel], 1.0))
    # Cost relative to a fixed-sigma step (rough): Multiscale certifies up to len(grid) = 4 levels (~2.5 on average)
    # and reruns its stopping rule (<= 4 x n_predict = 400 forward passes) in every attack forward pass (m = 8 draws
    # with a backward, ~3 forward passes each): ~17x; DDS searches (steps x draws = 800 forward + backward passes) per
    # image before CERTIFY (~1.25x at n = 10,000) and again in every attack forward pass (~100x).
    dds_work = 800 if size.name != "smoke" else 20
    batch = [f"sigma_search.batch_size={size.search_batch}"] if size.search_batch else []
    if "multiscale" in methods:
        search = ["sigma_search=multiscale", *batch]
        points.append(("multiscale", base_ckpt, search, search, (2.5, 1 + 400 / (3 * size.m))))
    if "dds" in methods:
        search = ["sigma_search=dds", *size.search, *batch]
        surrogate = [f"defense.search_surrogate={{steps:{size.dds_surrogate}}}"] if size.dds_surrogate else []
        attack_work = dds_work * (size.dds_surrogate / 100 if size.dds_surrogate else 1)
        points.append(("dds", base_ckpt, search, search + surrogate,
                       (1 + 3 * dds_work / (size.n + size.n0), 1 + attack_work / size.m)))
    for name, ckpt, c_args, a_args, cost in points:
        c_cost, a_cost = cost if isinstance(cost, tuple) else (cost, cost)
        c_est, a_est = one_cert * c_cost, one_atk * a_cost
        if counted:
            c_est, a_est = (r["start"] + mx * unit_seconds(size, r, name, "cert"),
                            r["start"] + len(size.eps) * amx * unit_seconds(size, r, name, "attack"))
        steps.append(app_step(f"cert/{name}", "certify", [f"ckpt_path={ckpt}", *c_args, *cert,
                                                      f"certify.out_dir={out / 'cert' / name}"],
                          out / "cert" / name, c_est))
        steps.append(app_step(f"atk/{name}", "attack", [f"ckpt_path={ckpt}", *a_args, *atk,
                                                    f"attack.out_dir={out / 'atk' / name}"],
                          out / "atk" / name, a_est))
    title = f"'Input-dependent smoothing methods on one frontier ({size.name} size)'"
    steps.append(app_step("report", "report", [f"report.inputs=[{tr},{out / 'cert'},{out / 'atk'}]",
                                           f"report.title={title}", f"report.out_dir={out / 'report'}"],
                      out / "report", r["start"] + 10))
    return steps


def compose(app: str, overrides: list[str], folder: Path):
    """The app's config as `python -m vrs.apps.<app> overrides` would compose it, writing into `folder`
    (paths.output_dir), with Hydra's node installed so that `${hydra:...}` resolves."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vrs.apps import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=app, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(folder)
    return cfg


def check_steps(steps: list[Step]) -> int:
    """--dry-run: compose every step's config as its app would and check its values (vrs.config_schema.check_values;
    the checkpoints and data files do not exist yet); 0 when all pass, else 1 with one line per failing step."""
    from vrs.config_schema import check_values

    failed = 0
    for s in steps:
        try:
            check_values(compose(s.app, s.args, s.folder), s.app)
        except Exception as err:  # noqa: BLE001 - reported per step
            failed += 1
            print(f"{s.name}: {type(err).__name__}: {err}")
    print(f"{len(steps) - failed} of {len(steps)} step configs compose and pass the value checks")
    return 1 if failed else 0


def run_step(step: Step) -> None:
    """Validate the config as the app's entry point does, run the app in this process; a training run also leaves
    its config in <folder>/.hydra/ (vrs-report reads a selector's objective and stage-1 file there)."""
    from omegaconf import OmegaConf

    from vrs.config_schema import validate_config

    step.folder.mkdir(parents=True, exist_ok=True)
    cfg = compose(step.app, step.args, step.folder)
    validate_config(cfg, step.app)
    if step.app == "train":
        from vrs.apps.train import train

        (step.folder / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(cfg, step.folder / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(step.args), step.folder / ".hydra" / "overrides.yaml")
        train(cfg)
    elif step.app == "certify":
        from vrs.apps.certify import certify

        certify(cfg)
    elif step.app == "attack":
        from vrs.apps.attack import run

        run(cfg)
    else:
        from vrs.apps.report import build_report

        build_report(cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="smoke")
    p.add_argument("--out", type=Path, help="output root (rerun with the same --out to continue)")
    p.add_argument("--data-root", help="Fashion-MNIST folder (*.gz), passed as data.root")
    p.add_argument("--vrs-objective", default="oracle_labels", choices=sorted(vf.OBJECTIVE_RUNS),
                   help="the VRS selector's objective (docs/results.md: none beat the frontier; default oracle_labels, "
                        "the labels Dual RS's estimator learns too)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {','.join(METHODS)} (default all)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no step (after the first) once its estimate does not fit what is left")
    p.add_argument("--estimate", action="store_true", help="print the steps and their estimated seconds, run nothing")
    p.add_argument("--dry-run", action="store_true",
                   help="print the steps, their estimates and their commands, and compose and check each step's config "
                        "(the values; files are not checked), run nothing")
    args = p.parse_args(argv)
    methods = tuple(args.methods.split(","))
    if not methods or set(methods) - set(METHODS):
        p.error(f"--methods={args.methods!r}: a comma-separated subset of {','.join(METHODS)}")
    size = SIZES[args.size]
    out = (args.out or Path("outputs") / f"input_dependent_{size.name}").resolve()
    steps = build_steps(size, out, args.data_root, args.vrs_objective, methods)
    if args.estimate or args.dry_run:
        code = print_estimate(steps, size.name, size.device, args.dry_run)
        return check_steps(steps) if args.dry_run else code

    def execute(s: Step, left: float | None, record: dict) -> tuple[int, bool]:
        try:
            run_step(s)
            return 0, False
        except (Exception, SystemExit):  # noqa: BLE001 - recorded, and the run stops here
            traceback.print_exc()
            return 1, False

    fields = dict(size=clean_json(asdict(size)), seed=SEED, out=str(out), data_root=args.data_root,
                  vrs_objective=args.vrs_objective, methods=list(methods))
    status, code = run_steps("input_dependent", steps, out, argv, fields, args.time_budget, execute)
    if code == 0:
        print(f"report: {out / 'report' / 'report.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
