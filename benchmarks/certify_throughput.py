"""Certification throughput: seconds per image for Cohen's CERTIFY on a CIFAR-shaped ResNet-110, for
(a) a reference loop written the way locuslab/smoothing's core.py does it and (b) our engine
(vrs.smoothing.SmoothedClassifier) in several configurations, in the same process; plus the pure forward
throughput of the network (samples/s, achieved FLOP/s) so the distance to the hardware limit is visible.

    python benchmarks/certify_throughput.py --out $OUT/certify_throughput.json           # GPU: the full run
    python benchmarks/certify_throughput.py --device cpu --n 2000 --images 2 --out /tmp/b.json  # CPU check

On a CPU the defaults shrink to a quick check that the script works: ResNet-20 instead of ResNet-110
(--depth 110 restores it), batch 500, one reference image.

The network is CifarResNet-110 (3x32x32, 10 classes) with random weights (speed does not depend on them),
behind the same Normalize layer a trained checkpoint has. Cohen's settings: n0 = 100, n = 100,000,
alpha = 0.001, sigma = 0.25.

Configurations of our engine (--configs):
  fp32                    true fp32 (TF32 off for convolutions and matmuls), NCHW
  tf32                    TF32 convolutions / matmuls, NCHW
  bf16_cl                 bf16 autocast + channels_last
  bf16_cl_compile         the same, torch.compile'd (--compile-mode, default "default")
  bf16_cl_graphs          CUDA graphs (compile mode reduce-overhead), batch 2048
  bf16_cl_autotune        compile mode max-autotune-no-cudagraphs (Triton convolutions), batch 2048
  bf16_cl_autotune_graphs compile mode max-autotune (the same + CUDA graphs), batch 2048
  fused                   bf16_cl_autotune_graphs with each residual stage as one fused Triton kernel
                          (fused_blocks=True; vrs-certify's default on CUDA), batch 2048
Compiled configurations run with Inductor's freezing (weights as constants: conv+BN folding).
A configuration that fails (e.g. a compiler problem) is reported in the JSON and the others still run.
The reference runs with PyTorch's default flags (cuDNN may use TF32 for fp32 convolutions on Ampere and
later, as Cohen's code would today); the JSON records the flags.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta, norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vrs.models import with_normalization
from vrs.models.lenet import LeNet
from vrs.models.resnet import CifarResNet
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
ENGINE_CONFIGS = {  # compiled configurations run with Inductor's freezing (SmoothedClassifier does it)
    "fp32": dict(precision="fp32", channels_last=False, compile=False),
    # the CPU's configurations: channels_last, and each BatchNorm folded into its convolution (vrs-certify's
    # defaults on a CPU: certify.channels_last=auto, certify.fold_batchnorm=auto)
    "fp32_cl": dict(precision="fp32", channels_last=True, compile=False),
    "fp32_cl_fold": dict(precision="fp32", channels_last=True, compile=False, fold_batchnorm=True),
    "tf32": dict(precision="tf32", channels_last=False, compile=False),
    "bf16_cl": dict(precision="bf16", channels_last=True, compile=False),
    "bf16_cl_compile": dict(precision="bf16", channels_last=True, compile=True),
    # CUDA graphs at a batch whose activations stay in the H100's L2 cache (benchmarks/forward_sweep.py)
    "bf16_cl_graphs": dict(precision="bf16", channels_last=True, compile="reduce-overhead", batch_size=2048),
    # Inductor's Triton convolutions, autotuned
    "bf16_cl_autotune": dict(precision="bf16", channels_last=True, compile="max-autotune-no-cudagraphs",
                             batch_size=2048),
    "bf16_cl_autotune_graphs": dict(precision="bf16", channels_last=True, compile="max-autotune", batch_size=2048),
    # the residual stages as fused Triton kernels, the rest as above (vrs-certify's default on CUDA)
    "fused": dict(precision="bf16", channels_last=True, compile="max-autotune", fused_blocks=True, batch_size=2048),
}


# ---- (a) the reference: locuslab/smoothing core.py, one image at a time --------------------------------------
class CohenReference:
    """Cohen et al.'s Smooth.certify as published: x.repeat into batches, torch.randn_like noise, argmax
    moved to the host each batch and counted with numpy (np.bincount, as their _count_arr loop does)."""

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float):
        self.base_classifier, self.num_classes, self.sigma = base_classifier, num_classes, sigma

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int) -> tuple[int, float]:
        self.base_classifier.eval()
        counts_selection = self._sample_noise(x, n0, batch_size)
        c_a = int(counts_selection.argmax().item())
        counts_estimation = self._sample_noise(x, n, batch_size)
        n_a = int(counts_estimation[c_a].item())
        p_a = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0  # = proportion_confint(..., 2*alpha, "beta")[0]
        if p_a < 0.5:
            return -1, 0.0
        return c_a, self.sigma * norm.ppf(p_a)

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int) -> np.ndarray:
        with torch.no_grad():
            counts = np.zeros(self.num_classes, dtype=int)
            for _ in range(math.ceil(num / batch_size)):
                this_batch_size = min(batch_size, num)
                num -= this_batch_size
                batch = x.repeat((this_batch_size, 1, 1, 1))
                noise = torch.randn_like(batch, device=x.device) * self.sigma
                predictions = self.base_classifier(batch + noise).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=self.num_classes)
            return counts


# ---- helpers ---------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def make_network(device: torch.device, depth: int = 110, seed: int = 0, lenet_width: int | None = None
                 ) -> tuple[torch.nn.Module, tuple[int, int, int], str]:
    """(network, input shape, description): a CifarResNet of `depth` on 3x32x32, or with `lenet_width` the
    project's Fashion-MNIST LeNet (model=lenet, hidden 64) of that width on 1x28x28; random weights and BatchNorm
    statistics (speed does not depend on them), behind the Normalize layer a trained checkpoint has."""
    torch.manual_seed(seed)
    if lenet_width:
        net = with_normalization(LeNet(in_channels=1, num_classes=10, input_size=28, width=lenet_width, hidden=64),
                                 [0.286], [0.353])
        shape, name = (1, 28, 28), f"LeNet (width {lenet_width}, hidden 64, random init) + Normalize, 1x28x28"
    else:
        net = with_normalization(CifarResNet(depth=depth, in_channels=3, num_classes=10), CIFAR_MEAN, CIFAR_STD)
        shape, name = (3, 32, 32), f"CifarResNet-{depth} (random init) + Normalize, 3x32x32"
    for m in net.modules():  # non-trivial statistics, so that folding them has an effect to measure
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net.to(device).eval(), shape, f"{name}, 10 classes"


def flops_per_sample(net: torch.nn.Module, device: torch.device, shape: tuple[int, int, int]) -> float:
    """FLOPs of one forward sample (torch.utils.flop_counter: 2 per multiply-add of convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(8, *shape, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 8


def samples_per_second(step, batch: int, seconds: float, device: torch.device, warmup_calls: int = 2,
                       sync_every: int = 10) -> tuple[float, int]:
    """Samples/s of step() (one batch per call) over a window of `seconds`, after `warmup_calls` calls.

    On a GPU it syncs only every `sync_every` calls: a sync per call would expose the launch gap that CUDA
    graphs and large batches are there to hide."""
    for _ in range(warmup_calls):
        step()
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        step()
        iters += 1
        if iters % sync_every == 0 or device.type == "cpu":
            sync(device)
            if time.perf_counter() - start >= seconds:
                break
    sync(device)
    return iters * batch / (time.perf_counter() - start), iters


def forward_throughput(net: torch.nn.Module, device: torch.device, cfg: dict, batch_size: int, seconds: float,
                       flops: float, compile_mode: str, shape: tuple[int, int, int]) -> dict:
    """Samples/s of the bare forward pass (+ argmax) at a fixed batch size, in one configuration."""
    engine = SmoothedClassifier(net, 10, 0.25, device=device, **cfg_for(cfg, compile_mode))
    x = torch.rand(batch_size, *shape, device=device)
    if engine.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    engine.warmup(batch_size, shape)  # compiles when asked to
    with torch.inference_mode(), engine._precision_context():
        engine._forward(x).argmax(1)
        sync(device)
        warm = time.perf_counter() - t0
        rate, iters = samples_per_second(lambda: engine._forward(x).argmax(1), batch_size, seconds, device,
                                         warmup_calls=0, sync_every=5)
    return {"samples_per_s": rate, "tflop_per_s": rate * flops / 1e12, "batch_size": batch_size,
            "seconds_per_100k_samples": 1e5 / rate, "warmup_s": warm, "iters": iters}


def cfg_for(cfg: dict, compile_mode: str) -> dict:
    out = {k: v for k, v in cfg.items() if k != "batch_size"}
    if out.get("compile") is True:
        out["compile"] = compile_mode
    return out


def batch_of(name: str, args) -> int:
    """The forward batch of an engine configuration: its own if it names one, else --batch-size."""
    return ENGINE_CONFIGS[name].get("batch_size", args.batch_size)


def tf32_flags() -> dict:
    return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


# ---- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--images", type=int, default=20, help="test images certified by each method")
    p.add_argument("--ref-images", type=int, default=None, help="images for the reference loop (default --images)")
    p.add_argument("--ref-batch", type=int, default=1000, help="reference batch of noisy copies (Cohen: 1,000)")
    p.add_argument("--batch-size", type=int, default=None, help="our engine's forward batch (4096; CPU: 500)")
    p.add_argument("--depth", type=int, default=None, help="CifarResNet depth (110; CPU: 20)")
    p.add_argument("--lenet-width", type=int, default=None,
                   help="certify the Fashion-MNIST LeNet of this width (1x28x28) instead of a CifarResNet")
    p.add_argument("--group", type=int, default=4, help="images per group in our engine")
    p.add_argument("--configs", default=None,
                   help=f"comma list of engine configs ({','.join(ENGINE_CONFIGS)}); default: all but tf32 on "
                        "CUDA, fp32 on CPU")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode for *_compile configs (default, reduce-overhead, max-autotune, ...)")
    p.add_argument("--forward-seconds", type=float, default=None, help="timing window per forward config")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:  # torch 2.11's set_device needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    configs = (args.configs.split(",") if args.configs else
               [c for c in ENGINE_CONFIGS if c != "tf32" and not c.startswith("fp32_")] if device.type == "cuda"
               else ["fp32", "fp32_cl", "fp32_cl_fold"])
    unknown = [c for c in configs if c not in ENGINE_CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {list(ENGINE_CONFIGS)}")
    cuda = device.type == "cuda"
    fwd_seconds = args.forward_seconds or (5.0 if cuda else 1.0)
    ref_images = args.ref_images if args.ref_images is not None else (args.images if cuda else 1)
    args.batch_size = args.batch_size or (4096 if cuda else 500)
    args.depth = args.depth or (110 if cuda else 20)
    net, shape, network_name = make_network(device, args.depth, lenet_width=args.lenet_width)
    # The reference gets its own copy, made before any engine exists: an engine with channels_last=True converts
    # the network it is given to channels_last in place, and Cohen's loop runs the plain NCHW network.
    reference_net = copy.deepcopy(net)
    flops = flops_per_sample(net, device, shape)
    g = torch.Generator().manual_seed(1234)
    images = torch.rand(args.images, *shape, generator=g)  # stand-ins for test images
    result: dict = {
        "device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "network": network_name,
        "gflop_per_sample": flops / 1e9, "n0": args.n0, "n": args.n, "alpha": args.alpha, "sigma": args.sigma,
        "images": args.images, "reference_images": ref_images, "engine_batch_size": args.batch_size,
        "engine_images_per_group": args.group, "compile_mode": args.compile_mode, "default_flags": tf32_flags(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "forward": {}, "engine": {}, "reference": None,
    }
    print(f"# {result['device']} | torch {torch.__version__} | {network_name} {flops / 1e9:.4f} GFLOP/sample | "
          f"n0={args.n0} n={args.n} alpha={args.alpha}", flush=True)

    # pure forward throughput
    for name in list(configs):
        try:
            result["forward"][name] = fw = forward_throughput(net, device, ENGINE_CONFIGS[name], batch_of(name, args),
                                                              fwd_seconds, flops, args.compile_mode, shape)
        except Exception as err:  # noqa: BLE001 - report the failing configuration, keep measuring the others
            result["forward"][name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            print(f"forward {name:16s} FAILED: {type(err).__name__}: {str(err)[:300]}", flush=True)
            configs.remove(name)
            continue
        print(f"forward {name:16s} {fw['samples_per_s']:>12,.0f} samples/s  {fw['tflop_per_s']:7.2f} TFLOP/s  "
              f"({fw['seconds_per_100k_samples']:.3f} s / 100k; warm-up {fw['warmup_s']:.1f} s)", flush=True)

    # (a) reference
    if not args.skip_reference and ref_images > 0:
        ref = CohenReference(reference_net, 10, args.sigma)
        torch.manual_seed(0)
        xs = images[:ref_images].to(device)
        ref.certify(xs[0], min(args.n0, 100), min(args.n, args.ref_batch), args.alpha, args.ref_batch)  # warm-up
        sync(device)
        preds, radii, times = [], [], []
        for i in range(ref_images):
            t0 = time.perf_counter()
            c, r = ref.certify(xs[i], args.n0, args.n, args.alpha, args.ref_batch)
            sync(device)
            times.append(time.perf_counter() - t0)
            preds.append(c)
            radii.append(r)
        result["reference"] = {"seconds_per_image": float(np.mean(times)),
                               "seconds_per_image_std": float(np.std(times)),
                               "batch": args.ref_batch, "predictions": preds, "radii": radii}
        print(f"reference (Cohen core.py loop)  {np.mean(times):.3f} s/image  (+- {np.std(times):.3f})", flush=True)

    # (b) our engine
    for name in configs:
        cfg = cfg_for(ENGINE_CONFIGS[name], args.compile_mode)
        engine = SmoothedClassifier(net, 10, args.sigma, device=device, **cfg)
        batch = batch_of(name, args)
        t0 = time.perf_counter()
        engine.warmup(batch, shape)
        warm = time.perf_counter() - t0
        groups = [list(range(i, min(i + args.group, args.images))) for i in range(0, args.images, args.group)]
        # one untimed group (allocator, cuDNN autotuning), then the timed run over all images
        next(engine.certify_groups([(images[:1], [image_seed(99, 0)], None)], args.n0, args.n, args.alpha, batch))
        sync(device)
        t0 = time.perf_counter()
        preds, radii = [], []
        for res in engine.certify_groups(((images[grp], [image_seed(0, i) for i in grp], None) for grp in groups),
                                         args.n0, args.n, args.alpha, batch):
            preds += res.prediction.tolist()
            radii += res.radius.tolist()
        sync(device)
        spi = (time.perf_counter() - t0) / args.images
        fw = result["forward"][name]
        floor = (args.n0 + args.n) / fw["samples_per_s"]  # the forward passes alone, at that batch size
        result["engine"][name] = e = {"seconds_per_image": spi, "config": dict(ENGINE_CONFIGS[name], **cfg),
                                      "batch_size": batch,
                                      "warmup_s": warm,
                                      "forward_only_seconds_per_image": floor, "efficiency_vs_forward": floor / spi,
                                      "predictions": preds, "radii": radii}
        if result["reference"]:
            e["speedup_vs_reference"] = result["reference"]["seconds_per_image"] / spi
            ref_p = result["reference"]["predictions"]
            e["agreement_with_reference"] = float(np.mean([a == b for a, b in zip(preds, ref_p)]))
        versus = f"  {e['speedup_vs_reference']:.1f}x the reference" if result["reference"] else ""
        print(f"engine {name:16s} {spi:.3f} s/image  (forward alone {floor:.3f} s: {100 * floor / spi:.0f}% of the "
              f"time is forward passes)" + versus, flush=True)

    print()
    print(markdown_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON: {args.out}")
    return result


def markdown_table(r: dict) -> str:
    lines = [f"Device: {r['device']}, torch {r['torch']}; {r['network']} ({r['gflop_per_sample']:.3f} GFLOP/sample); "
             f"n0 = {r['n0']}, n = {r['n']:,}, alpha = {r['alpha']}; {r['images']} images.", "",
             "| method | precision / layout | batch | s per image | speed-up vs reference | forward-only s per image "
             "| forward samples/s | forward TFLOP/s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    if r["reference"]:
        lines.append(f"| reference (Cohen core.py loop, 1 image at a time) | fp32 (PyTorch default flags), NCHW | "
                     f"{r['reference']['batch']} | {r['reference']['seconds_per_image']:.3f} | 1.0x | | | |")
    for name, e in r["engine"].items():
        fw = r["forward"][name]
        cfg = e["config"]
        desc = f"{cfg['precision']}{', channels_last' if cfg['channels_last'] else ''}" + \
               (f", torch.compile({cfg['compile']}) + freezing" if cfg["compile"] else "") + \
               (", fused residual stages" if cfg.get("fused_blocks") else "") + \
               (", BatchNorm folded" if cfg.get("fold_batchnorm") else "")
        speed = f"{e['speedup_vs_reference']:.1f}x" if "speedup_vs_reference" in e else "-"
        lines.append(f"| vrs engine ({name}) | {desc} | {e['batch_size']} | {e['seconds_per_image']:.3f} | {speed} | "
                     f"{e['forward_only_seconds_per_image']:.3f} | {fw['samples_per_s']:,.0f} | "
                     f"{fw['tflop_per_s']:.3g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
