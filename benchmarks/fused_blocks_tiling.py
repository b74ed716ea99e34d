"""The fused residual-stage kernel (vrs.kernels) stage by stage: its error against the plain
blocks, its time for each launch tiling, and the time of the same blocks compiled by Inductor, in one run.

    python benchmarks/fused_blocks_tiling.py --out $OUT/fused_blocks_tiling.json      # GPU (CUDA + Triton)

For each stage of CifarResNet-110 (16 channels at 32x32, 32 at 16x16, 64 at 8x8; 18, 17 and 17 identity
blocks) with random BatchNorm statistics, at --batch images of bf16 channels_last activations:
- rel_err: max |fused - fp32 blocks| / max |fp32 blocks| on 64 images;
- ms per call of the kernel for each (pixels per tile, warps, pipelining stages) in the grid (--pixels,
  --warps, --stages; tiles larger than the image are skipped); the fastest is what triton_stage.TILING holds;
- ms per call of the plain blocks under torch.compile(mode="max-autotune-no-cudagraphs") with Inductor's
  freezing (BatchNorm folded), bf16 autocast: what the engine ran before the fused kernel (--no-inductor skips it).
Times are CUDA-event means over 20 calls after one warm call.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certify_throughput import device_name, make_network

from vrs.kernels import dispatch, fuse, triton_stage


def randomize_batchnorm(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
            m.bias.data.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)


def cuda_ms(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def activations(n: int, c: int, h: int) -> torch.Tensor:
    x = torch.relu(torch.randn(n, c, h, h, device="cuda")).to(torch.bfloat16)
    return x.contiguous(memory_format=torch.channels_last)


def resnet110_stages(device: torch.device) -> list[tuple[fuse.FusedResidualStage, int, int]]:
    """The fused stages of CifarResNet-110 with random BatchNorm statistics: (stage, channels, image size)."""
    net = make_network(device, 110)
    randomize_batchnorm(net)
    stages = [m for m in fuse.fuse_residual_stages(net).modules()
              if isinstance(m, fuse.FusedResidualStage)]
    return [(stage, stage.weight.shape[-1], {16: 32, 32: 16, 64: 8}[stage.weight.shape[-1]]) for stage in stages]


def inductor_ms(stage: fuse.FusedResidualStage, x: torch.Tensor) -> float:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    torch.backends.cudnn.benchmark = True
    with torch.autocast("cuda", dtype=torch.bfloat16), inductor_config.patch(freezing=True):
        compiled = torch.compile(stage.blocks, mode="max-autotune-no-cudagraphs", dynamic=False)
        return cuda_ms(lambda: compiled(x))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--pixels", default="64,128,256,512,1024")  # tiles larger than the image are skipped
    p.add_argument("--warps", default="2,4,8")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--no-inductor", action="store_true")
    p.add_argument("--out", default="fused_blocks_tiling.json")
    args = p.parse_args(argv)
    if not (torch.cuda.is_available() and dispatch.triton_available()):
        sys.exit("fused_blocks_tiling.py needs a CUDA GPU and Triton")
    device = torch.device("cuda")
    grid = list(itertools.product(*(map(int, a.split(",")) for a in (args.pixels, args.warps, args.stages))))
    out = {"device": device_name(device), "torch": torch.__version__, "batch": args.batch,
           "tiling_before": {str(k): v for k, v in triton_stage.TILING.items()}, "stages": []}
    with torch.inference_mode():
        for stage, c, h in resnet110_stages(device):
            weight = stage.weight.to(torch.bfloat16)
            small = activations(64, c, h)
            reference = stage.blocks(small.float())
            err = (dispatch.launch(small, weight, stage.bias, kernel="triton").float() - reference).abs().max()
            row = {"channels": c, "size": h, "blocks": stage.weight.shape[0],
                   "rel_err": (err / reference.abs().max()).item(), "tilings": []}
            x = activations(args.batch, c, h)
            for pixels, warps, pipeline in grid:
                if pixels > h * h:
                    continue
                entry = {"pixels": pixels, "warps": warps, "stages": pipeline}
                tiling = (pixels, warps, pipeline)
                try:
                    entry["ms"] = cuda_ms(functools.partial(dispatch.launch, x, weight, stage.bias, "triton", tiling))
                except Exception as exc:  # noqa: BLE001 - e.g. too much shared memory: one bad row
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:200]
                row["tilings"].append(entry)
                print(json.dumps({"channels": c, **entry}), flush=True)
            timed = [t for t in row["tilings"] if "ms" in t]
            row["fastest"] = min(timed, key=lambda t: t["ms"]) if timed else None
            row["current_tiling_ms"] = cuda_ms(functools.partial(dispatch.launch, x, weight, stage.bias, "triton"))
            if not args.no_inductor:
                row["inductor_ms"] = inductor_ms(stage, x)
            out["stages"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "tilings"}), flush=True)
            Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n| stage | rel. error vs fp32 | fused kernel ms (TILING) | fastest tiling in grid | Inductor ms |")
    print("| --- | --- | --- | --- | --- |")
    for r in out["stages"]:
        f = r["fastest"] or {}
        print(f"| {r['channels']} ch, {r['size']}x{r['size']}, {r['blocks']} blocks | {r['rel_err']:.4f} | "
              f"{r['current_tiling_ms']:.3f} | {f.get('pixels')}/{f.get('warps')}/{f.get('stages')}: "
              f"{f.get('ms', float('nan')):.3f} | {r.get('inductor_ms', float('nan')):.3f} |")
    return out


if __name__ == "__main__":
    main()
