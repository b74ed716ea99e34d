"""Forward throughput of the certification network across batch size, cuDNN autotuning, compile mode and
Inductor settings; optionally a kernel-level profile of one configuration.

Certification is 100% forward passes (docs/performance.md), so the engine's speed is set by which forward
configuration it uses. This sweep finds it: for each configuration it times the bare forward + argmax of a
CIFAR-shaped ResNet (random weights, behind the Normalize layer), autocast (bf16 unless `+fp16`), channels_last.

    python benchmarks/forward_sweep.py --out $OUT/forward_sweep.json                       # GPU
    python benchmarks/forward_sweep.py --configs max-autotune@2048,max-autotune+cd@2048 \
        --profile max-autotune@2048 --out $OUT/forward_sweep.json                           # GPU, with a profile
    python benchmarks/forward_sweep.py --device cpu --depth 20 --configs eager@64 --seconds 1   # CPU check

A configuration is `<mode>[+knob...]@<batch>`:
  mode   `eager`, `eager_bench` (torch.backends.cudnn.benchmark on), or a torch.compile mode (`default`,
         `reduce-overhead`, `max-autotune`, `max-autotune-no-cudagraphs`) with Inductor's freezing (conv + BN
         folding) and cudnn.benchmark on; a mode ending in `~nobench` runs with cudnn.benchmark off (the suffix
         may also follow the knobs: `max-autotune+cd~nobench@2048`).
  knobs  `+cd`      torch._inductor.config.coordinate_descent_tuning = True
         `+triton`  max_autotune_conv_backends = "TRITON" (Triton conv templates only, no ATen/cuDNN choice;
                    for the max-autotune modes on CUDA: elsewhere a convolution is left without a choice and fails)
         `+noepi`   epilogue_fusion = False (what the fused epilogues bring)
         `+fuse`    benchmark_epilogue_fusion = False (fuse every epilogue a template can take, without
                    Inductor's benchmark deciding against it)
         `+fp16`    autocast to float16 instead of bfloat16
         `+blocks`  run each stage's identity blocks as one fused Triton kernel (vrs.kernels); with
                    `eager+blocks` only those kernels differ from eager, with a compile mode Inductor compiles
                    the rest around them
         The Inductor settings are patched around the compile, the first (compiling) call and the timing.
         An unknown knob, or a setting the running torch does not have, gives that configuration an error row.
Small batches keep the activations in the GPU's L2 cache (50 MB on an H100) but need CUDA graphs to hide the
launch cost; large ones do not.
Each result is appended to the JSON as soon as it is measured, so a time limit loses only the one in flight;
a failing configuration gets an error row and the others still run. A markdown table closes the output.

--profile CONFIG (same syntax) builds that configuration again after the sweep, runs 20 warm calls, profiles 10
with torch.profiler and writes under "profile": the top 30 kernels by total device time (name, calls, total_ms,
avg_us, percent of all device time), device time per kind of kernel, and device time and wall time per forward.
On a CPU it profiles CPU activity only (operators' self CPU time) so the code path can be checked there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certify_throughput import device_name, flops_per_sample, make_network, samples_per_second, sync

NOBENCH = "~nobench"
# knob -> Inductor settings it patches; `fp16` changes the autocast dtype instead (see Config.dtype)
KNOBS: dict[str, dict] = {
    "cd": {"coordinate_descent_tuning": True},
    "triton": {"max_autotune_conv_backends": "TRITON"},
    "noepi": {"epilogue_fusion": False},
    "fuse": {"benchmark_epilogue_fusion": False},
    "fp16": {},
    "blocks": {},
}
PROFILE_WARM, PROFILE_CALLS, PROFILE_TOP = 20, 10, 30


@dataclass(frozen=True)
class Config:
    spec: str
    mode: str
    batch: int
    knobs: tuple[str, ...] = ()
    nobench: bool = False

    @property
    def eager(self) -> bool:
        return self.mode.startswith("eager")

    @property
    def cudnn_benchmark(self) -> bool:
        return self.mode != "eager" and not self.nobench

    @property
    def cudagraphs(self) -> bool:
        # CUDA-graph modes need a step marker between calls, else the next replay overwrites a live output;
        # marking in max-autotune-no-cudagraphs too is harmless
        return "autotune" in self.mode or "overhead" in self.mode

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if "fp16" in self.knobs else torch.bfloat16

    def inductor_patches(self) -> dict:
        """Inductor settings for this configuration; raises ValueError for a knob or setting that is unknown."""
        import torch._inductor.config as inductor_config

        patches = {"freezing": True}
        for knob in self.knobs:
            if knob not in KNOBS:
                raise ValueError(f"unknown knob +{knob}; choose from {', '.join('+' + k for k in KNOBS)}")
            patches.update(KNOBS[knob])
        # checked here so that the row names the setting (config.patch would raise a bare AttributeError)
        missing = [name for name in patches if not hasattr(inductor_config, name)]
        if missing:
            raise ValueError(f"torch {torch.__version__} has no torch._inductor.config.{', '.join(missing)}")
        return patches

    def label(self) -> dict:
        return {"spec": self.spec, "mode": self.mode, "knobs": list(self.knobs), "batch": self.batch}


def parse_config(spec: str) -> Config:
    """`<mode>[+knob...][~nobench]@<batch>` -> Config. Knobs are validated later, so that they fail as a row."""
    head, batch = spec.strip().rsplit("@", 1)
    nobench = NOBENCH in head
    mode, *knobs = head.replace(NOBENCH, "").split("+")
    return Config(spec=spec.strip(), mode=mode, batch=int(batch), knobs=tuple(knobs), nobench=nobench)


@contextlib.contextmanager
def forward_context(cfg: Config, device: torch.device):
    """Inference mode, autocast and the Inductor patches. Compilation is lazy (first call), and Inductor may
    read settings again when a guard recompiles, so the patch stays on for the whole use, not just torch.compile."""
    import torch._inductor.config as inductor_config

    with torch.inference_mode(), torch.autocast(device.type, dtype=cfg.dtype), \
            inductor_config.patch(**cfg.inductor_patches()):
        yield


def build(net: torch.nn.Module, cfg: Config, device: torch.device):
    """The forward + argmax step of cfg, called once (that call compiles). Use inside forward_context."""
    torch._dynamo.reset()
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    x = torch.rand(cfg.batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    if "blocks" in cfg.knobs:
        from vrs.kernels.fuse import fuse_residual_stages

        net = fuse_residual_stages(net)
    fn = net if cfg.eager else torch.compile(net, mode=cfg.mode, dynamic=False)

    def step():
        if cfg.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return fn(x).argmax(1)

    step()
    sync(device)
    return step


def measure(net: torch.nn.Module, cfg: Config, device: torch.device, seconds: float, flops: float) -> dict:
    t0 = time.perf_counter()
    with forward_context(cfg, device):
        step = build(net, cfg, device)
        compile_s = time.perf_counter() - t0
        rate, iters = samples_per_second(step, cfg.batch, seconds, device)
    return {**cfg.label(), "cudnn_benchmark": cfg.cudnn_benchmark, "dtype": str(cfg.dtype).removeprefix("torch."),
            "samples_per_s": rate, "tflop_per_s": rate * flops / 1e12, "seconds_per_100k": 1e5 / rate,
            "compile_s": compile_s, "iters": iters}


def run_config(net: torch.nn.Module, spec: str, device: torch.device, seconds: float, flops: float) -> dict:
    """measure() one spec, or an error row if it cannot be parsed, compiled or run."""
    try:
        cfg = parse_config(spec)
    except Exception as exc:  # noqa: BLE001 - a malformed spec is one bad row, not a failed sweep
        return {"spec": spec, "error": f"bad config spec: {type(exc).__name__}: {exc}"}
    try:
        return measure(net, cfg, device, seconds, flops)
    except Exception as exc:  # noqa: BLE001 - report a failing configuration, keep the others
        return {**cfg.label(), "error": f"{type(exc).__name__}: {exc}"[:500]}


# ---- profile ---------------------------------------------------------------------------------------------------
def device_work(events, on_cuda: bool) -> dict[str, list[float]]:
    """Kernel name -> durations (us). On CUDA: the GPU's own events (kernels, memcpy, memset), whose times do not
    include launch overhead. On a CPU: operators' self time, so that nested operators are not counted twice."""
    from torch.autograd import DeviceType

    work: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if on_cuda and e.device_type == DeviceType.CUDA:
            work[e.name].append(e.time_range.elapsed_us())
        elif not on_cuda and e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0:
            work[e.name].append(e.self_cpu_time_total)
    return work


def kernel_kind(name: str) -> str:
    """Coarse kind from Inductor's kernel naming: tem = templates (Triton conv/GEMM), poi = pointwise,
    per/red = reductions; anything else is a library kernel (cuDNN, cuBLAS, ATen)."""
    for prefix in ("triton_tem", "triton_poi", "triton_per", "triton_red"):
        if name.startswith(prefix):
            return prefix
    return "triton_other" if name.startswith("triton") else "library/aten"


def summarize(work: dict[str, list[float]], calls: int) -> dict:
    total_us = sum(sum(d) for d in work.values()) or float("nan")
    rows = sorted(((name, len(d), sum(d)) for name, d in work.items()), key=lambda r: -r[2])
    kinds: dict[str, float] = defaultdict(float)
    for name, _, us in rows:
        kinds[kernel_kind(name)] += us
    return {
        "device_ms_per_forward": total_us / calls / 1e3,
        "distinct_kernels": len(rows),
        "kernels_per_forward": sum(n for _, n, _ in rows) / calls,
        "by_kind_percent": {k: 100 * us / total_us for k, us in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top": [{"name": name[:120], "calls": n, "total_ms": us / 1e3, "avg_us": us / n, "percent": 100 * us / total_us}
                for name, n, us in rows[:PROFILE_TOP]],
    }


def profile_forward(net: torch.nn.Module, spec: str, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    cfg = parse_config(spec)
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with forward_context(cfg, device):
        step = build(net, cfg, device)
        for _ in range(PROFILE_WARM):  # autotuning, allocator and CUDA-graph recording settle before profiling
            step()
        sync(device)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(PROFILE_CALLS):
                step()
            sync(device)
            wall_s = time.perf_counter() - t0
    # wall vs device time per forward shows the idle GPU time (launch gaps, host work) the kernels do not
    return {**cfg.label(), "activity": "cuda" if on_cuda else "cpu", "forwards": PROFILE_CALLS,
            "wall_ms_per_forward_profiled": wall_s / PROFILE_CALLS * 1e3,
            **summarize(device_work(prof.events(), on_cuda), PROFILE_CALLS)}


def print_profile(p: dict) -> None:
    if "error" in p:
        print(f"\nprofile {p['spec']} FAILED: {p['error']}")
        return
    print(f"\nprofile {p['spec']} ({p['activity']}): {p['device_ms_per_forward']:.3f} ms device time per forward, "
          f"{p['wall_ms_per_forward_profiled']:.3f} ms wall (profiled), {p['kernels_per_forward']:.0f} kernels per "
          f"forward, {p['distinct_kernels']} distinct")
    print("by kind: " + ", ".join(f"{k} {v:.1f}%" for k, v in p["by_kind_percent"].items()))
    print(f"{'total_ms':>9} {'avg_us':>9} {'calls':>6} {'%':>5}  name")
    for r in p["top"]:
        print(f"{r['total_ms']:9.3f} {r['avg_us']:9.1f} {r['calls']:6d} {r['percent']:5.1f}  {r['name']}")


# ---- output ----------------------------------------------------------------------------------------------------
def markdown_table(results: list[dict]) -> str:
    lines = ["| config | batch | samples/s | s per 100k | compile s |", "| --- | --- | ---: | ---: | ---: |"]
    for r in results:
        config = r["spec"].rsplit("@", 1)[0]
        if "error" in r:
            error = " ".join(r["error"][:80].split()).replace("|", "/")  # one table cell: no newlines or pipes
            lines.append(f"| {config} | {r.get('batch', '')} | error: {error} | | |")
        else:
            lines.append(f"| {config} | {r['batch']} | {r['samples_per_s']:,.0f} | {r['seconds_per_100k']:.3f} | "
                         f"{r['compile_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=int, default=110)
    p.add_argument("--configs", default="eager@4096,eager_bench@4096,eager_bench@1024,default@4096,"
                   "reduce-overhead@4096,reduce-overhead@1024,reduce-overhead@512,reduce-overhead@256",
                   help="comma list of <mode>[+knob...]@<batch>")
    p.add_argument("--seconds", type=float, default=4.0, help="timing window per configuration")
    p.add_argument("--profile", default=None, metavar="CONFIG", help="profile this configuration after the sweep")
    p.add_argument("--out", default="forward_sweep.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    net = make_network(device, args.depth).to(memory_format=torch.channels_last)
    flops = flops_per_sample(net, device)
    out = {"device": device_name(device), "torch": torch.__version__, "depth": args.depth,
           "gflop_per_sample": flops / 1e9, "results": []}

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=1))

    for spec in args.configs.split(","):
        row = run_config(net, spec, device, args.seconds, flops)
        out["results"].append(row)
        print(json.dumps(row), flush=True)
        save()
    if args.profile:
        try:
            out["profile"] = profile_forward(net, args.profile, device)
        except Exception as exc:  # noqa: BLE001 - the sweep's results are saved either way
            out["profile"] = {"spec": args.profile, "error": f"{type(exc).__name__}: {exc}"[:500]}
        save()
        print_profile(out["profile"])
    print()
    print(markdown_table(out["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
