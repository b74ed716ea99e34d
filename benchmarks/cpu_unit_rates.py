"""Seconds per noisy sample of the networks an experiment's CPU size uses, for the scripts' --estimate (RATES in
benchmarks/vrs_frontier.py).

    nice -n 10 python benchmarks/cpu_unit_rates.py --reference-s 0.78

For each network (random weights: speed does not depend on them; eval mode, channels_last, a base classifier's BatchNorm
folded, as vrs-certify runs them on a CPU) it times, at a batch of 1,000 noisy 28x28 images:
  fwd    draw the noise + forward (certification, PREDICT, the searches' stopping rules)
  grad   draw the noise + forward + backward to the input (the attacks, DDS's search)
  train  forward + backward + SGD step at batch 256 (training; per training image)
The CPU may be shared, so it measures CPU time of ONE thread (torch.set_num_threads(1): no thread waits on
another, and the time does not depend on how much of the CPU the process gets), and scales every rate to the quiet
2-core machine by the reference: the width-8 LeNet's `fwd` against --reference-s, vrs-certify's measured seconds
an image at n0 + n = 10,100 there (the scale is then the apps' 2-thread speed-up and overhead; it assumes every
network has the same, +-30 %).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


def per_sample(fn, samples: int, min_s: float) -> float:
    fn()  # warm-up
    reps, t0 = 0, time.process_time()
    while time.process_time() - t0 < min_s or reps < 2:
        fn()
        reps += 1
    return (time.process_time() - t0) / (reps * samples)


def rates(net: nn.Module, selector: bool, min_s: float) -> dict:
    from vrs.smoothing.batchnorm_folding import fold_batchnorm

    net = (net.eval() if selector else fold_batchnorm(net.eval())).to(memory_format=torch.channels_last)
    x = torch.rand(1000, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    lam = torch.full((1000,), 0.5)
    call = (lambda z: net(z, lam)) if selector else net

    def fwd():
        with torch.inference_mode():
            call(x + 0.5 * torch.randn_like(x))

    def grad():
        z = x.clone().requires_grad_(True)
        call(z + 0.5 * torch.randn_like(z)).sum().backward()

    out = {"fwd": per_sample(fwd, 1000, min_s), "grad": per_sample(grad, 1000, min_s)}
    if not selector:
        train_net = net.train()
        opt = torch.optim.SGD(train_net.parameters(), lr=0.01)
        xb, yb = x[:256], torch.randint(0, 10, (256,))

        def step():
            opt.zero_grad()
            nn.functional.cross_entropy(train_net(xb + 0.5 * torch.randn_like(xb)), yb).backward()
            opt.step()

        out["train"] = per_sample(step, 256, min_s)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-s", type=float, default=0.78,
                   help="vrs-certify's seconds an image (n0 + n = 10,100) of the width-8 LeNet on the quiet machine")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    p.add_argument("--out", help="JSON file for the rates")
    args = p.parse_args(argv)
    from vrs.models.lenet import LeNet
    from vrs.models.mlp import MLP
    from vrs.selection.networks import SelectorCNN, SelectorMLP

    torch.manual_seed(0)
    torch.set_num_threads(1)
    nets = {"lenet8": (LeNet(1, 10, 28, width=8, hidden=64), False), "mlp": (MLP(1, 10, 28), False),
            "selector8": (SelectorCNN(1, width=8), True), "selector16": (SelectorCNN(1, width=16), True),
            "selector_mlp": (SelectorMLP(1, 28), True)}
    measured = {name: rates(net, sel, args.seconds) for name, (net, sel) in nets.items()}
    scale = args.reference_s / 10_100 / measured["lenet8"]["fwd"]
    result = {"threads": 1, "clock": "process CPU time", "reference_s": args.reference_s, "quiet_over_measured": scale,
              "measured": measured,
              "quiet": {n: {k: v * scale for k, v in r.items()} for n, r in measured.items()}}
    for n, r in result["quiet"].items():
        print(f"{n:11s} " + "  ".join(f"{k} {v * 1e6:7.2f} us ({1 / v:8.0f}/s)" for k, v in r.items()))
    print(f"quiet 2 cores / one thread's CPU time: {scale:.3f} "
          f"(reference: the width-8 LeNet's fwd at {args.reference_s} s per 10,100)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
