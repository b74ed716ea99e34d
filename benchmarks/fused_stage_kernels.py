"""The two implementations of the fused residual stage side by side, stage by stage: the Triton kernel
(vrs.kernels.triton_stage, operands through shared memory) and the Gluon kernel (vrs.kernels.gluon_stage,
operands loaded straight into tensor-core registers), in one run.

    python benchmarks/fused_stage_kernels.py --out $OUT/fused_stage_kernels.json      # GPU (CUDA + Triton)

For each stage of CifarResNet-110 (16 channels at 32x32, 32 at 16x16, 64 at 8x8; 18, 17 and 17 identity
blocks) with random BatchNorm statistics, at --batch images of bf16 channels_last activations:
- ms per call of the Triton kernel at triton_stage.TILING and of the Gluon kernel for each (pixels per tile,
  warps) of the grid (CUDA-event means over 20 calls after one warm call), and the ratio Triton / Gluon;
- max |gluon - triton| / max |triton| over the whole batch, and each kernel's error against the fp32 blocks
  on 64 images (max |kernel - fp32| / max |fp32|).
gluon_stage.TILING lists the channel counts (and tiling) where the Gluon kernel is the faster.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certify_throughput import device_name
from fused_blocks_tiling import activations, cuda_ms, resnet110_stages

from vrs.kernels import dispatch, gluon_stage, triton_stage

GRID = {16: "256x4,512x4,512x8,1024x8", 32: "128x2,128x4,256x4,256x8", 64: "64x2,64x4"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2048)
    for c, grid in GRID.items():
        p.add_argument(f"--grid{c}", default=grid, help=f"Gluon tilings for {c} channels: pixels x warps, ...")
    p.add_argument("--out", default="fused_stage_kernels.json")
    args = p.parse_args(argv)
    if not (torch.cuda.is_available() and dispatch.triton_available() and gluon_stage.gluon_available()):
        sys.exit("fused_stage_kernels.py needs a CUDA GPU and Triton with Gluon")
    device = torch.device("cuda")
    out = {"device": device_name(device), "torch": torch.__version__, "batch": args.batch, "stages": []}
    with torch.inference_mode():
        for stage, c, h in resnet110_stages(device):
            weight = stage.weight.to(torch.bfloat16)
            small = activations(64, c, h)
            exact = stage.blocks(small.float())
            scale = exact.abs().max()

            def rel_err(kernel: str, tiling: tuple[int, ...] | None = None, small=small, weight=weight, stage=stage,
                        exact=exact, scale=scale) -> float:
                got = dispatch.launch(small, weight, stage.bias, kernel, tiling)
                return ((got.float() - exact).abs().max() / scale).item()

            x = activations(args.batch, c, h)
            triton_out = dispatch.launch(x, weight, stage.bias, kernel="triton")
            triton_ms = cuda_ms(functools.partial(dispatch.launch, x, weight, stage.bias, kernel="triton"))
            row = {"channels": c, "size": h, "blocks": stage.weight.shape[0],
                   "triton": {"tiling": triton_stage.TILING.get(c), "rel_err_fp32": rel_err("triton"), "ms": triton_ms},
                   "gluon": []}
            for item in getattr(args, f"grid{c}").split(","):
                pixels, warps = map(int, item.split("x"))
                entry = {"pixels": pixels, "warps": warps}
                tiling = (pixels, warps)
                try:
                    got = dispatch.launch(x, weight, stage.bias, "gluon", tiling)
                    entry["rel_vs_triton"] = ((got.float() - triton_out.float()).abs().max()
                                              / triton_out.float().abs().max()).item()
                    entry["rel_err_fp32"] = rel_err("gluon", tiling)
                    entry["ms"] = cuda_ms(functools.partial(dispatch.launch, x, weight, stage.bias, "gluon", tiling))
                    entry["speedup_vs_triton"] = row["triton"]["ms"] / entry["ms"]
                except Exception as exc:  # noqa: BLE001 - one bad tiling is one row, not the run
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
                row["gluon"].append(entry)
                print(json.dumps({"channels": c, **entry}), flush=True)
            out["stages"].append(row)
            Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\n{out['device']}, batch {args.batch}, bf16 channels_last")
    print("| stage | Triton kernel ms | Gluon kernel: fastest tiling, ms | Triton / Gluon "
          "| max rel. diff Gluon vs Triton | rel. error vs fp32 (Triton, Gluon) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in out["stages"]:
        timed = [g for g in r["gluon"] if "ms" in g]
        best = min(timed, key=lambda g: g["ms"]) if timed else {}
        print(f"| {r['channels']} ch, {r['size']}x{r['size']}, {r['blocks']} blocks | {r['triton']['ms']:.3f} | "
              f"{best.get('pixels')}x{best.get('warps')}: {best.get('ms', float('nan')):.3f} | "
              f"{best.get('speedup_vs_triton', float('nan')):.2f}x | {best.get('rel_vs_triton', float('nan')):.2g} | "
              f"{r['triton']['rel_err_fp32']:.4f}, {best.get('rel_err_fp32', float('nan')):.4f} |")
    return out


if __name__ == "__main__":
    main()
