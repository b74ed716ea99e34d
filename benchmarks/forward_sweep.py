"""Forward throughput of the certification network across batch size, cuDNN autotuning and compile mode.

Certification is 100% forward passes (docs/performance.md), so the engine's speed is set by which forward
configuration it uses. This sweep finds it: for each configuration it times the bare forward + argmax of a
CIFAR-shaped ResNet (random weights, behind the Normalize layer), bf16 autocast, channels_last.

    python benchmarks/forward_sweep.py --out $OUT/forward_sweep.json                       # GPU
    python benchmarks/forward_sweep.py --device cpu --depth 20 --batches 64 --modes eager --seconds 1   # CPU check

A configuration is `<mode>@<batch>`: mode is `eager`, `eager_bench` (torch.backends.cudnn.benchmark on), or a
torch.compile mode (`default`, `reduce-overhead`, `max-autotune`, `max-autotune-no-cudagraphs`) with
Inductor's freezing (conv + BN folding) and cudnn.benchmark on; a compile mode ending in `~nobench` runs
with cudnn.benchmark off. Small batches keep the activations in the
GPU's L2 cache (50 MB on an H100) but need CUDA graphs to hide the launch cost; large ones do not.
Each result is appended to the JSON as soon as it is measured, so a time limit loses only the one in flight.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certify_throughput import device_name, flops_per_sample, make_network, sync  # noqa: E402


def time_forward(fn, x: torch.Tensor, seconds: float, device: torch.device, mark_step: bool) -> tuple[float, int]:
    """Samples/s of fn(x).argmax(1) over a window of `seconds` (after two warm-up calls)."""
    def once():
        if mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        return fn(x).argmax(1)

    once(), once()
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        once()
        iters += 1
        if iters % 10 == 0 or device.type == "cpu":
            sync(device)
            if time.perf_counter() - start >= seconds:
                break
    sync(device)
    return iters * x.shape[0] / (time.perf_counter() - start), iters


def measure(net: torch.nn.Module, mode: str, batch: int, device: torch.device, seconds: float, flops: float) -> dict:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    torch.backends.cudnn.benchmark = mode != "eager" and not mode.endswith("~nobench")
    mode = mode.removesuffix("~nobench")
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16), \
            inductor_config.patch(freezing=True):
        fn = net if mode.startswith("eager") else torch.compile(net, mode=mode, dynamic=False)
        fn(x).argmax(1)  # compiles
        sync(device)
        compile_s = time.perf_counter() - t0
        rate, iters = time_forward(fn, x, seconds, device, mark_step="autotune" in mode or "overhead" in mode)
    return {"mode": mode, "cudnn_benchmark": torch.backends.cudnn.benchmark, "batch": batch, "samples_per_s": rate, "tflop_per_s": rate * flops / 1e12,
            "seconds_per_100k": 1e5 / rate, "compile_s": compile_s, "iters": iters}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=int, default=110)
    p.add_argument("--configs", default="eager@4096,eager_bench@4096,eager_bench@1024,default@4096,"
                   "reduce-overhead@4096,reduce-overhead@1024,reduce-overhead@512,reduce-overhead@256",
                   help="comma list of <mode>@<batch>")
    p.add_argument("--seconds", type=float, default=4.0, help="timing window per configuration")
    p.add_argument("--out", default="forward_sweep.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    net = make_network(device, args.depth).to(memory_format=torch.channels_last)
    flops = flops_per_sample(net, device)
    out = {"device": device_name(device), "torch": torch.__version__, "depth": args.depth,
           "gflop_per_sample": flops / 1e9, "results": []}
    for spec in args.configs.split(","):
        mode, batch = spec.rsplit("@", 1)
        try:
            row = measure(net, mode, int(batch), device, args.seconds, flops)
        except Exception as exc:  # noqa: BLE001 - report a failing configuration, keep the others
            row = {"mode": mode, "batch": int(batch), "error": f"{type(exc).__name__}: {exc}"[:500]}
        out["results"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
