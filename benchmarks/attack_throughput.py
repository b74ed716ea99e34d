"""Attack throughput: images/s of EOT-PGD against the whole defended pipeline (vrs.attacks.DefendedModel),
fixed sigma and VRS selector, bf16 autocast on and off, on one device.

    python benchmarks/attack_throughput.py --device cuda --out $OUT/attack_throughput.json       # GPU
    python benchmarks/attack_throughput.py --device cpu --images 4 --out /tmp/attack_tp.json     # CPU check

What one attacked image costs: steps x eot gradient evaluations, each a forward and backward pass of the
base classifier on m noisy copies (plus, with the selector, n_h noisy copies through the selector).
Defaults: EOT-PGD under L2 (vrs.attacks.AdaptivePGD via the `eot_pgd` config), eps = 0.5, 10 steps, 4 EOT
draws (on a CPU: 2 steps, 1 draw, one timed repeat, so the check takes seconds), m = 8 soft-smoothing draws,
fresh noise; LeNet on 1x28x28 inputs (Fashion-MNIST's shape, the
issue's experiment) with random weights (speed does not depend on them); the selector is the project's
SelectorCNN (width 16, depth 3) with median smoothing over n_h = 8 copies and a straight-through gradient.

Configurations (--configs): fixed_fp32, fixed_bf16, vrs_fp32, vrs_bf16 ("bf16": torch.autocast with
bfloat16 around the networks; the noise and x + sigma z stay float32). Each is timed --repeats times after a
warm-up call; the table reports the median. Besides images/s it reports noisy samples/s through the base
classifier (forward + backward), i.e. images/s x steps x eot x m.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vrs.attacks import DefendedModel, SelectorSigma, build_attack
from vrs.models import with_normalization

CONFIGS = ("fixed_fp32", "fixed_bf16", "vrs_fp32", "vrs_bf16")
FMNIST_MEAN, FMNIST_STD = [0.2860], [0.3530]


def base_network(model: str, channels: int, size: int, num_classes: int) -> torch.nn.Module:
    if model == "lenet":
        from vrs.models.lenet import LeNet

        net = LeNet(channels, num_classes, size)
    else:
        from vrs.models.resnet import CifarResNet

        depth = int(model.replace("resnet", ""))
        net = CifarResNet(depth=depth, num_classes=num_classes, in_channels=channels)
    mean = (FMNIST_MEAN * channels)[:channels]
    std = (FMNIST_STD * channels)[:channels]
    return with_normalization(net, mean, std)


def selector_network(channels: int) -> torch.nn.Module:
    from vrs.selection.networks import NoiseSelector, SelectorCNN

    trunk = SelectorCNN(channels, out_dim=1, width=16, depth=3, cond_dim=32)
    return NoiseSelector(trunk, (FMNIST_MEAN * channels)[:channels], (FMNIST_STD * channels)[:channels], 0.12, 1.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(name: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    base = base_network(args.model, args.channels, args.size, 10).to(device).eval()
    precision = "bf16" if name.endswith("bf16") else "fp32"
    if name.startswith("vrs"):
        sigma = SelectorSigma(selector_network(args.channels).to(device).eval(), 0.5, 0.12, 1.0, n_h=args.n_h,
                              sigma_h=0.25, grad="straight_through", grid=[0.12, 0.25, 0.5, 1.0])
    else:
        sigma = 0.25
    model = DefendedModel(base, sigma, m=args.m, noise="fresh", precision=precision, seed=0).to(device)
    cfg = {"name": "eot_pgd", "norm": args.norm, "eps": args.eps, "steps": args.steps, "eot": args.eot}
    attack = build_attack(cfg, model, args.eps, 10, seed=0)
    x = torch.rand(args.images, args.channels, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.images,), device=device)
    attack(x[: min(2, args.images)], y[: min(2, args.images)])  # warm-up (cuDNN autotuning, allocator)
    sync(device)
    times = []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        adv = attack(x, y)
        sync(device)
        times.append(time.perf_counter() - t0)
    d = (adv - x).flatten(1)
    bound = d.norm(dim=1).max().item() if args.norm == "l2" else d.abs().max().item()
    t = statistics.median(times)
    per_image_passes = args.steps * args.eot * args.m
    return {"config": name, "precision": precision, "selector": name.startswith("vrs"), "seconds": times,
            "seconds_median": t, "images_per_s": args.images / t,
            "noisy_samples_per_s": args.images * per_image_passes / t, "max_perturbation": bound,
            "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=256, help="images attacked in one batch")
    p.add_argument("--model", default="lenet", help="lenet | resnet20 | resnet56 | resnet110")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--norm", default="l2", choices=("l2", "linf"))
    p.add_argument("--eps", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=None, help="default: 10 on CUDA, 2 on CPU (a quick check)")
    p.add_argument("--eot", type=int, default=None, help="default: 4 on CUDA, 1 on CPU")
    p.add_argument("--m", type=int, default=8, help="soft-smoothing noise draws per forward pass")
    p.add_argument("--n-h", type=int, default=8, help="selector noise copies per forward pass (vrs configs)")
    p.add_argument("--repeats", type=int, default=None, help="default: 3 on CUDA, 1 on CPU")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown configs {bad}; choose from {', '.join(CONFIGS)}")
    device = torch.device(args.device)
    quick = device.type != "cuda"
    args.steps = args.steps or (2 if quick else 10)
    args.eot = args.eot or (1 if quick else 4)
    args.repeats = args.repeats or (1 if quick else 3)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = []
    for name in configs:
        try:
            results.append(run_config(name, args, device))
        except Exception as err:  # noqa: BLE001 - report a failing configuration and measure the others
            results.append({"config": name, "error": f"{type(err).__name__}: {err}"})
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "settings": {k: getattr(args, k) for k in ("images", "model", "channels", "size", "norm", "eps", "steps",
                                                        "eot", "m", "n_h", "repeats")},
            "attack": "eot_pgd (L2: vrs.attacks.AdaptivePGD; Linf: torchattacks.EOTPGD), fresh noise"}
    out = {"info": info, "results": results}
    print(f"EOT-PGD ({args.norm}, eps={args.eps:g}, {args.steps} steps x {args.eot} EOT, m={args.m}) "
          f"on {info['device']} "
          f"({args.model} {args.channels}x{args.size}x{args.size}, {args.images} images, torch {torch.__version__})\n")
    print("| config | precision | selector | images/s | noisy samples/s (fwd+bwd) | s per batch (median) |")
    print("|---|---|---|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['config']} | - | - | failed: {r['error'][:60]} | | |")
            continue
        print(f"| {r['config']} | {r['precision']} | {'yes' if r['selector'] else 'no'} | {r['images_per_s']:.1f} | "
              f"{r['noisy_samples_per_s']:.0f} | {r['seconds_median']:.3f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
