"""input_dependent.py's cpu size, each kind of step on a few images, against the estimate (docs/performance.md,
"The cpu size's rates").

    nice -n 10 python benchmarks/input_dependent_probe.py --out /tmp/idm_probe/run                # training too
    nice -n 10 python benchmarks/input_dependent_probe.py --out /tmp/idm_probe/run2 --train-from /tmp/idm_probe/run \\
        --images 24

It runs the cpu size's steps (training 1 epoch; certification and attacks of the 0.5 points, Multiscale and DDS on
--images test images) in this process on ONE thread and measures each step's CPU time, which does not depend on how
much of a shared CPU the process gets; `quiet` scales it to the quiet 2-core machine by --scale (cpu_unit_rates.py's
"quiet 2 cores / one thread's CPU time", 0.578 on 2026-12-07). Prints and writes <out>/probe.json; a rerun skips the
steps already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import input_dependent as idm

TRAIN = ("train/base", "train/vrs", "train/dual_rs")
POINTS = ("cert/fixed_0.5", "atk/fixed_0.5", "cert/vrs_0.5", "atk/vrs_0.5", "cert/dual_rs_0.5", "atk/dual_rs_0.5",
          "cert/multiscale", "atk/multiscale", "cert/dds", "atk/dds")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-from", type=Path, help="an earlier probe's --out: use its trained networks")
    p.add_argument("--images", type=int, default=4, help="test images certified and attacked per point")
    p.add_argument("--scale", type=float, default=0.578)
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cpu = idm.SIZES["cpu"]
    one_epoch = ("trainer.max_epochs=1",)
    probe = replace(cpu, base=tuple(o for o in cpu.base if not o.startswith("trainer.max_epochs")) + one_epoch,
                    selector=tuple(o for o in cpu.selector if not o.startswith("trainer.max_epochs")) + one_epoch,
                    cert_images=(cpu.cert_images[0], args.images), attack_images=(cpu.attack_images[0], args.images),
                    base_work=cpu.base_work // 5, selector_work=cpu.selector_work // 5)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_from and not (args.out / "train").exists():
        (args.out / "train").symlink_to((args.train_from / "train").resolve())
    record = args.out / "probe.json"
    res = json.loads(record.read_text()) if record.is_file() else {}
    wanted = POINTS if args.train_from else TRAIN + POINTS
    for s in idm.build_steps(probe, args.out, args.data_root, "oracle_labels"):
        if s.name not in wanted or s.name in res:
            continue
        t0, w0 = time.process_time(), time.perf_counter()
        idm.run_step(s)
        cpu_s = time.process_time() - t0
        res[s.name] = {"cpu_s": round(cpu_s, 2), "quiet_s": round(cpu_s * args.scale, 2),
                       "estimate_s": round(s.estimate_s, 2), "wall_s": round(time.perf_counter() - w0, 1),
                       "images": args.images}
        print(f"PROBE {s.name}: cpu {cpu_s:.1f} s -> quiet {cpu_s * args.scale:.1f} s, estimate {s.estimate_s:.1f} s",
              flush=True)
        record.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
