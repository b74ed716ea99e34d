"""Training throughput (images/s of one epoch with Gaussian noise augmentation): this project's module under
Lightning against a plain PyTorch loop written the way locuslab/smoothing's train.py does it.

    python benchmarks/train_throughput.py --device cuda --images 50000 --workers 4 \\
        --compile default,reduce-overhead --out train_throughput.json
    python benchmarks/train_throughput.py --device cpu --images 512 --epochs 1     # quick check, no GPU

Two models: ResNet-110 on 3x32x32 synthetic images (CIFAR-shaped, random crop 4 + horizontal flip, as for
CIFAR-10) and the default Fashion-MNIST model (LeNet, 1x28x28 synthetic images, no crop/flip, as
data=fashion_mnist). Image content does not change the speed, so both use `data=synthetic`; both pipelines
see the same uint8 images, batch size, sigma and SGD settings.

(a) ours: `NoisyClassifierModule` + `ImageDataModule` built from conf/ (Hydra compose) and run by a Lightning
    Trainer from `trainer=gpu` (bf16-mixed, cudnn.benchmark; channels_last on CUDA), the whole data set on
    the device with per-sample random crop/flip done there in batch; `--compile MODES` adds a row per
    torch.compile mode (module.compile=true, or e.g. "reduce-overhead" for CUDA graphs).
(b) reference: fp32 model (normalisation layer first), a torch DataLoader over a Dataset that converts and
    randomly crops/flips one image per __getitem__ call (torchvision's RandomCrop/RandomHorizontalFlip/ToTensor
    done with torch ops, since torchvision is not a dependency), num_workers=--workers (Cohen's default: 4),
    no pinned memory, and per step loss.item() / top-1 and top-5 accuracy .item() as in train.py's meters.

Each pipeline runs --warmup-epochs untimed epochs first (compilation, cuDNN autotuning; default 1 on CUDA), then
--epochs timed epochs, with torch.cuda.synchronize() at both ends of each. Prints a markdown table and writes
the JSON (device, versions, settings, rows) to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without `pip install -e .` (the GPU machine)
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

MODELS = {
    # name: data overrides (shape, normalisation and augmentation of the data set the model is for)
    "resnet110": dict(channels=3, size=32, mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616],
                      crop_padding=4, hflip=True, like="cifar10"),
    "lenet": dict(channels=1, size=28, mean=[0.2860], std=[0.3530], crop_padding=0, hflip=False, like="fashion_mnist"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- (a) ours ------------------------------------------------------------------------------------
def compose(model: str, images: int, batch_size: int, sigma: float, device: str, compile_mode, precision,
            cuda_graph: str = "auto"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vrs.apps import CONFIG_DIR

    spec = MODELS[model]
    fmt = lambda v: "[" + ",".join(map(str, v)) + "]"  # noqa: E731
    overrides = [
        f"model={model}", "data=synthetic", f"data.channels={spec['channels']}", f"data.size={spec['size']}",
        f"data.mean={fmt(spec['mean'])}", f"data.std={fmt(spec['std'])}", f"data.crop_padding={spec['crop_padding']}",
        f"data.hflip={spec['hflip']}", "data.val_size=0", f"data.synthetic.num_train={images}",
        "data.synthetic.num_test=16", f"data.batch_size={batch_size}", "noise=fixed", f"noise.sigma={sigma}",
        "optimizer=sgd", "scheduler=step", "trainer=gpu" if device == "cuda" else "trainer=cpu",
        "module.compile=" + (json.dumps(compile_mode) if isinstance(compile_mode, str)
                             else str(bool(compile_mode)).lower()),
        "logger=none", "callbacks=none", f"module.cuda_graph={cuda_graph}",
    ]
    if precision:
        overrides.append(f"trainer.precision={precision}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def run_ours(model: str, args, compile_mode=False, cuda_graph: str = "auto") -> dict:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    cfg = compose(model, args.images, args.batch_size, args.sigma, args.device, compile_mode, args.precision,
                  cuda_graph)
    device = torch.device(args.device)
    pl.seed_everything(0, verbose=False)
    dm = instantiate(cfg.data)
    dm.setup()
    module = instantiate(cfg.module, data=dm.spec.to_dict())

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            sync(device)
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            sync(device)
            self.times.append(time.perf_counter() - self.t0)

    timer = EpochTimer()
    trainer = instantiate(cfg.trainer, max_epochs=args.warmup_epochs + args.epochs, min_epochs=None,
                          callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                          default_root_dir=str(Path(args.tmp) / "lightning"))
    trainer.fit(module, datamodule=dm)
    n = len(dm.splits["train"][1])
    timed = timer.times[args.warmup_epochs:]
    graphed = module._graphed is not None
    label = ("ours (Lightning, device loader" + (", whole-step CUDA graph" if graphed else ", eager steps")
             + (f", compile={compile_mode}" if compile_mode else "") + ")")
    return dict(model=model, pipeline=label, cuda_graph=graphed, precision=str(trainer.precision),
                channels_last=bool(module._channels_last), images=n, epochs=len(timed), seconds=sum(timed),
                images_per_s=n * len(timed) / sum(timed), warmup_seconds=sum(timer.times[: args.warmup_epochs]))


# ---- (b) the reference: locuslab/smoothing's train.py way -----------------------------------------
class PerSampleAugmented(Dataset):
    """One image per call: uint8 -> float in [0,1] (ToTensor), zero-padded random crop, random flip."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, padding: int, hflip: bool):
        self.x, self.y, self.padding, self.hflip = x, y, padding, hflip

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i].float().div(255.0)
        if self.padding:
            p = self.padding
            _, h, w = img.shape
            img = F.pad(img, (p, p, p, p))
            top, left = random.randint(0, 2 * p), random.randint(0, 2 * p)
            img = img[:, top : top + h, left : left + w]
        if self.hflip and random.random() < 0.5:
            img = img.flip(-1)
        return img, int(self.y[i])


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / target.size(0)) for k in topk]


def run_reference(model: str, args) -> dict:
    from hydra.utils import instantiate

    from vrs.models import with_normalization

    cfg = compose(model, args.images, args.batch_size, args.sigma, args.device, False, None)
    torch.manual_seed(0)
    random.seed(0)
    dm = instantiate(cfg.data)
    dm.setup()
    x, y = dm.splits["train"]
    spec = MODELS[model]
    device = torch.device(args.device)
    net = with_normalization(instantiate(cfg.model), spec["mean"], spec["std"]).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
    loader = DataLoader(PerSampleAugmented(x, y, spec["crop_padding"], spec["hflip"]), batch_size=args.batch_size,
                        shuffle=True, num_workers=args.workers, pin_memory=False)
    times = []
    for _epoch in range(args.warmup_epochs + args.epochs):
        net.train()
        sync(device)
        t0 = time.perf_counter()
        losses, top1 = 0.0, 0.0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            inputs = inputs + torch.randn_like(inputs, device=device) * args.sigma
            outputs = net(inputs)
            loss = F.cross_entropy(outputs, targets)
            acc1, acc5 = topk_accuracy(outputs, targets, topk=(1, min(5, outputs.shape[1])))
            losses += loss.item() * inputs.size(0)
            top1 += acc1.item() * inputs.size(0)
            _ = acc5.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    timed = times[args.warmup_epochs:]
    return dict(model=model, pipeline=f"reference (fp32, DataLoader, {args.workers} workers)", precision="32",
                channels_last=False, images=len(y), epochs=len(timed), seconds=sum(timed),
                images_per_s=len(y) * len(timed) / sum(timed), warmup_seconds=sum(times[: args.warmup_epochs]))


# ---- main ----------------------------------------------------------------------------------------
def markdown(rows: list[dict]) -> str:
    out = ["| model | pipeline | precision | images x epochs | seconds | images/s | vs reference |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = r.get("ratio")
        out.append(f"| {r['model']} | {r['pipeline']} | {r['precision']} | {r['images']} x {r['epochs']} | "
                   f"{r['seconds']:.2f} | {r['images_per_s']:,.0f} | {f'{ratio:.2f}x' if ratio else '1.00x'} |")
    return "\n".join(out)


def environment(device: str) -> dict:
    import pytorch_lightning as pl

    env = dict(python=platform.python_version(), torch=torch.__version__, lightning=pl.__version__,
               cpu_count=__import__("os").cpu_count(), device=device,
               cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
               matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["torch_threads"] = torch.get_num_threads()
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--models", default="resnet110,lenet", help="comma-separated: resnet110, lenet")
    p.add_argument("--images", type=int, default=50_000, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="untimed epochs first (default: 1 on CUDA or with --compile, else 0)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--workers", type=int, default=4, help="reference DataLoader workers (Cohen's default: 4)")
    p.add_argument("--compile", nargs="?", const="default", default="",
                   help='also time ours with module.compile, one row per comma-separated torch.compile mode: '
                        '"default", "reduce-overhead" (CUDA graphs), "max-autotune"; bare --compile = default')
    p.add_argument("--cuda-graph", default="auto",
                   help="ours' module.cuda_graph, one row per comma-separated value (auto, true, false); "
                        "auto = the whole training step in one CUDA graph on a GPU")
    p.add_argument("--precision", default=None, help="override ours' trainer.precision (default: trainer=gpu/cpu's)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--tmp", default="/tmp/vrs-train-throughput")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if args.warmup_epochs is None:  # on the CPU there is no autotuning to warm up, and ResNet-110 is slow there
        args.warmup_epochs = 1 if args.device == "cuda" or args.compile else 0
    compile_modes = [m.strip() for m in args.compile.split(",") if m.strip()]
    cuda_graphs = [g.strip() for g in args.cuda_graph.split(",") if g.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")

    rows = []
    for model in models:
        ref = None if args.skip_reference else run_reference(model, args)
        variants = [(c, g) for c in [False] + [True if m == "default" else m for m in compile_modes]
                    for g in cuda_graphs]
        runs = ([lambda ref=ref: ref] if ref else []) + [
            lambda c=c, g=g, model=model: run_ours(model, args, compile_mode=c, cuda_graph=g) for c, g in variants]
        for run in runs:  # print each result as soon as it exists: a time limit may stop the rest
            r = run()
            r["ratio"] = r["images_per_s"] / ref["images_per_s"] if ref and r is not ref else None
            print(f"{r['model']:>9}  {r['pipeline']:<70} {r['images_per_s']:>10,.0f} images/s"
                  + (f"  ({r['ratio']:.2f}x reference)" if r["ratio"] else ""), flush=True)
            rows.append(r)
    table = markdown(rows)
    env = environment(args.device)
    print(f"\n{table}\n\n{json.dumps(env)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"environment": env, "settings": vars(args), "rows": rows,
                                              "markdown": table, "command": " ".join(sys.argv)}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
