"""Where a ResNet-110 training step spends its time: our Lightning module against a bare loop on the same
network, data and precision, plus a torch.profiler table of the Lightning steps.

    python benchmarks/train_profile.py --out-dir $OUT/train_profile          # GPU
    python benchmarks/train_profile.py --device cpu --model lenet --steps 20 --out-dir /tmp/tp   # CPU check

Rows: the Lightning module (as `vrs-train` runs it: device loader, noise, metrics, logging) and a bare loop
(the same network, noise, bf16 autocast, channels_last and SGD; batches from the same device loader; no
Lightning, no metrics), each eager and torch.compile'd with the given modes. The gap between the two is
what the framework costs per step; the profile says where it goes.
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

from train_throughput import compose, sync


def build(args, compile_mode):
    from hydra.utils import instantiate

    cfg = compose(args.model, args.images, args.batch_size, 0.25, args.device, compile_mode, None)
    dm = instantiate(cfg.data)
    dm.setup()
    return cfg, dm, instantiate(cfg.module, data=dm.spec.to_dict())


def lightning_rate(args, compile_mode, out_dir: Path) -> dict:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    cfg, dm, module = build(args, compile_mode)
    device = torch.device(args.device)
    start, stop = args.steps, 2 * args.steps  # steps [0, start) warm up (and compile)

    class Probe(pl.Callback):
        def __init__(self):
            self.prof = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == start:
                sync(device)
                self.t0 = time.perf_counter()
                if args.profile:
                    acts = [torch.profiler.ProfilerActivity.CPU] + (
                        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
                    self.prof = torch.profiler.profile(activities=acts)
                    self.prof.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == stop:
                sync(device)
                self.seconds = time.perf_counter() - self.t0
                if self.prof is not None:
                    self.prof.__exit__(None, None, None)
                trainer.should_stop = True

    probe = Probe()
    trainer = instantiate(cfg.trainer, max_epochs=1000, min_epochs=None, callbacks=[probe], logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          limit_val_batches=0, num_sanity_val_steps=0, default_root_dir="/tmp/vrs-train-profile")
    trainer.fit(module, datamodule=dm)
    name = f"lightning_{compile_mode or 'eager'}"
    if probe.prof is not None:
        for key in ("self_cpu_time_total", "self_cuda_time_total" if device.type == "cuda" else "cpu_time_total"):
            table = probe.prof.key_averages().table(sort_by=key, row_limit=40)
            (out_dir / f"{name}.{key}.txt").write_text(table)
    steps = stop - start
    return {"pipeline": name, "ms_per_step": 1e3 * probe.seconds / steps,
            "images_per_s": steps * args.batch_size / probe.seconds, "precision": str(trainer.precision)}


def bare_rate(args, compile_mode) -> dict:
    """The same step without Lightning: noise, forward, loss, backward, SGD step."""
    from vrs.smoothing.noise import add_noise

    cfg, dm, module = build(args, False)
    device = torch.device(args.device)
    net = module.net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net, mode=None if compile_mode is True else compile_mode) if compile_mode else net
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loader = dm.train_dataloader()

    def batches():
        while True:
            for x, y in loader:
                yield dm.on_after_batch_transfer((x.to(device), y.to(device)), 0)

    it = batches()
    timed = args.steps
    for step in range(2 * args.steps):
        if step == args.steps:
            sync(device)
            t0 = time.perf_counter()
        x, y = next(it)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(fwd(add_noise(x, 0.25)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"pipeline": f"bare_{compile_mode or 'eager'}", "ms_per_step": 1e3 * seconds / timed,
            "images_per_s": timed * args.batch_size / seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet110")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=40, help="warm-up steps, then as many timed steps")
    p.add_argument("--compile", default="reduce-overhead", help="comma list of torch.compile modes ('' for none)")
    p.add_argument("--runs", default="lightning,bare", help="comma list: lightning, bare")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--out-dir", default="train_profile")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    modes = [False] + [m for m in args.compile.split(",") if m]
    rows = []
    for run in args.runs.split(","):
        for mode in modes:
            fn = lightning_rate if run == "lightning" else bare_rate
            try:
                row = fn(args, mode, out_dir) if run == "lightning" else fn(args, mode)
            except Exception as exc:  # noqa: BLE001 - keep the other rows
                row = {"pipeline": f"{run}_{mode or 'eager'}", "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out_dir / "rates.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
