"""Cost of one VRS selector training step against one base-classifier training step, same batch size.

Both modules are built from the project's configs (conf/train.yaml) and run under Lightning with the same
trainer settings; each step is timed with the device synchronised at both ends, warm-up steps excluded.

    python benchmarks/selector_step_cost.py --base-ckpt <multi-sigma base last.ckpt> --device cuda
    python benchmarks/selector_step_cost.py --base-ckpt <ckpt> --device cpu --steps 5 --warmup 2   # quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vrs.apps import CONFIG_DIR


class StepTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def _sync(self, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._sync(module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._sync(module)
        self.times.append(time.perf_counter() - self._t0)


def time_steps(overrides: list[str], args) -> dict:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, data=datamodule.spec.to_dict())
    timer = StepTimer()
    trainer = pl.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                         precision="bf16-mixed" if args.device == "cuda" else "32-true",
                         max_steps=args.warmup + args.steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    timed = timer.times[args.warmup:]
    return {"module": type(module).__name__, "steps": len(timed), "median_ms": 1000 * statistics.median(timed),
            "mean_ms": 1000 * statistics.fmean(timed), "batch_size": cfg.data.batch_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-ckpt", required=True,
                   help="a multi-sigma base classifier checkpoint (vrs-train noise=multi)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    common = [f"data.batch_size={args.batch_size}", "paths.output_dir=/tmp/selector-step-cost"]
    if args.data_root:
        common.append(f"data.root={args.data_root}")
    base = time_steps(["noise=multi", *common], args)
    sel = time_steps(["experiment=vrs_fmnist", f"base_ckpt={args.base_ckpt}", "module.diagnostics.enabled=false",
                      *common], args)
    ratio = sel["median_ms"] / base["median_ms"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"| step | ms (median of {base['steps']}) | vs base step |\n| --- | --- | --- |")
    print(f"| base classifier (NoisyClassifierModule, noise=multi) | {base['median_ms']:.2f} | 1.00x |")
    print(f"| selector (SelectorModule, n_trf draws, frozen base) | {sel['median_ms']:.2f} | {ratio:.2f}x |")
    print(f"device: {device}, torch {torch.__version__}, batch {args.batch_size}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"base": base, "selector": sel, "ratio": ratio, "device": device, "torch": torch.__version__}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
