"""How many samples certification needs (issue 21): certify.sampling = fixed | sequential | radius_target and the
sound lattice mode, on the same images, checkpoint and machine, in one process.

    python benchmarks/certify_sampling.py --ckpt <vrs-train run>/checkpoints/last.ckpt --out /tmp/sampling.json
    # the issue's full setting: 200 Fashion-MNIST test images, n = 100,000 (hours on a CPU):
    python benchmarks/certify_sampling.py --ckpt ... --images 200 --n 100000 --n0 100 --out sampling_full.json

For each mode: mean samples per image (n0 + estimation samples), seconds per image (wall time of the mode / images),
certified accuracy at --radii (abstentions wrong, all images in the denominator) and the ACR; against `fixed` in
the same run: the sample reduction, the time ratio and the certified accuracy difference in points. Modes:
  fixed           Cohen's CERTIFY, n0 + n samples per image
  sequential      looks at n/2^(looks-1), ..., n; stops once the radius is known to within --radius-tol
  radius_target   stops once certified yes / no is decided at every radius of --radii
  sound           fixed with the lattice noise of Voracek & Hein (vrs.smoothing.lattice)
  radius_target_sound  both
The images are every --skip-th image of the test split (Fashion-MNIST by default: --data); the checkpoint's own
training sigma unless --sigma. Targets (issue 21): radius_target >= 10x fewer samples than fixed at n = 100,000
with certified accuracy within 0.5 points; sound <= 1.2x fixed's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vrs.apps.certify import auto_images_per_group
from vrs.apps.skeleton import load_data
from vrs.checkpoint import load_checkpoint
from vrs.smoothing import core
from vrs.smoothing.sequential import SamplingPlan
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed

MODES = ("fixed", "sequential", "radius_target", "sound", "radius_target_sound")


def data_config(name: str, root: str | None) -> dict:
    """The data group's config (conf/data/<name>.yaml) composed by Hydra, with data.root."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="certify", overrides=[f"data={name}", "ckpt_path=x", "paths.output_dir=/tmp/x"]
                      + ([f"data.root={root}"] if root else []))
    return OmegaConf.to_container(cfg.data, resolve=True)


def run_mode(mode: str, network, num_classes: int, sigma: float, x: torch.Tensor, indices: list[int], args) -> dict:
    """Certify x (the test images at `indices`, which seed each image's noise) in one mode."""
    sampling = "fixed" if mode in ("fixed", "sound") else mode.replace("_sound", "")
    plan = None if sampling == "fixed" else SamplingPlan(sampling, n=args.n, alpha=args.alpha, looks=args.looks,
                                                         radii=tuple(args.radii), radius_tol=args.radius_tol)
    smoothed = SmoothedClassifier(network, num_classes, sigma, sampling=plan, sound=mode.endswith("sound"),
                                  device=args.device, fused_blocks=args.fused_blocks, precision=args.precision,
                                  channels_last=True, fold_batchnorm=not args.fused_blocks)  # vrs-certify's defaults
    per_group = auto_images_per_group(args.batch_size, args.n0, args.n, plan.schedule[0] if plan else None)
    results = []
    t0 = time.perf_counter()
    groups = [(x[i : i + per_group], [image_seed(args.seed, int(k)) for k in indices[i : i + per_group]])
              for i in range(0, len(x), per_group)]
    for res in smoothed.certify_groups(groups, args.n0, args.n, args.alpha, args.batch_size):
        results.append(res)
    wall = time.perf_counter() - t0
    return {"prediction": np.concatenate([r.prediction for r in results]),
            "radius": np.concatenate([r.radius for r in results]),
            "samples": np.concatenate([r.samples for r in results]), "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a vrs-train checkpoint (a base classifier)")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--skip", type=int, default=50, help="every skip-th test image")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--radii", type=lambda s: [float(v) for v in s.split(",")], default=[0.25, 0.5, 1.0])
    p.add_argument("--looks", type=int, default=8)
    p.add_argument("--radius-tol", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where the forward passes run (cpu, cuda)")
    p.add_argument("--precision", default="fp32", help="the network's precision (fp32, tf32, bf16, fp16)")
    p.add_argument("--fused-blocks", action="store_true",
                   help="certify through the fused residual-stage kernels (ResNets on CUDA: certify.fused_blocks)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--warmup-images", type=int, default=1,
                   help="images each mode certifies untimed before the timed run (kernel compilation, caches, "
                        "allocator: without it the first mode pays them; 0: none)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"--modes: {unknown} not among {', '.join(MODES)}")
    loaded = load_checkpoint(args.ckpt, kinds=("classifier",))
    sigma = loaded.smoothing_sigma(args.sigma, "--sigma")
    x_all, y_all, _ = load_data(data_config(args.data, args.data_root), "test")
    indices = list(range(0, len(y_all), args.skip))[: args.images]
    x = x_all[indices].float().div_(255.0)
    labels = np.asarray(y_all[indices])
    out = {"command": " ".join(sys.argv),
           "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
           + (f", {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""),
           "device": args.device, "fused_blocks": args.fused_blocks, "precision": args.precision,
           "checkpoint": str(args.ckpt), "sigma": sigma, "images": len(labels), "n0": args.n0, "n": args.n,
           "alpha": args.alpha, "radii": args.radii, "looks": args.looks, "radius_tol": args.radius_tol,
           "batch_size": args.batch_size, "modes": {}}
    t_start = time.perf_counter()
    if args.warmup_images > 0:
        for mode in modes:  # untimed, every mode's own code path once
            w = args.warmup_images
            run_mode(mode, loaded.network, loaded.num_classes, sigma, x[:w], indices[:w], args)
        out["warmup_images"] = args.warmup_images
    for mode in modes:
        r = run_mode(mode, loaded.network, loaded.num_classes, sigma, x, indices, args)
        correct = r["prediction"] == labels
        acc = core.certified_accuracy(r["radius"], correct, args.radii)
        out["modes"][mode] = {"mean_samples_per_image": float(r["samples"].mean()),
                              "seconds_per_image": r["wall"] / len(labels), "wall_seconds": r["wall"],
                              "certified_accuracy": {f"{q:g}": float(a) for q, a in zip(args.radii, acc)},
                              "acr": core.average_certified_radius(r["radius"], correct),
                              "clean_accuracy": float(correct.mean())}
        print(mode, json.dumps(out["modes"][mode]), flush=True)
    if "fixed" in out["modes"]:
        ref = out["modes"]["fixed"]
        for m in out["modes"].values():
            m["vs_fixed"] = {"sample_reduction": ref["mean_samples_per_image"] / m["mean_samples_per_image"],
                             "time_ratio": m["seconds_per_image"] / ref["seconds_per_image"],
                             "certified_accuracy_points": {k: 100 * (m["certified_accuracy"][k] - a)
                                                           for k, a in ref["certified_accuracy"].items()}}
    out["wall_seconds"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
