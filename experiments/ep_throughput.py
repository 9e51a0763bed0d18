"""Throughput (samples/s) of one EP training step vs the BP baseline, on CPU (and GPU if present).

One step = free phase (T1) + error vector (nudged phases / adjoint) + gradients + SGD update, on
a batch of digits with the 64-64-10 net. Methods are interleaved repeat by repeat (side by side,
same load) and the median over repeats is reported, by wall clock and by process CPU time
(the latter is steadier on a shared machine); ratios are relative to BP measured in the same run.

    python experiments/ep_throughput.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from saferl.common.io import write_text
from saferl.ep import EPNetConfig, EPTrainer, EPTrainerConfig, load_digits_split

METHODS = {
    "BP (RBP)": {"method": "bp"},
    "EP N=1": {"method": "ep", "n_points": 1, "beta": 0.1},
    "hEP N=2": {"method": "ep", "n_points": 2, "beta": 0.5},
    "hEP N=4": {"method": "ep", "n_points": 4, "beta": 0.5},
    "hEP N=2 + homeostasis": {"method": "ep", "n_points": 2, "beta": 0.5, "homeostasis": 1.0},
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[64])
    p.add_argument("--t1", type=int, default=150)
    p.add_argument("--t2", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--quick", action="store_true", help="tiny budget (a test runs this)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.t1, args.t2 = 2, 20, 5
    return args


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    d = load_digits_split(seed=0, device=args.device)
    x, y = d.x_train[: args.batch], d.y_train[: args.batch]
    trainers = {}
    for name, kw in METHODS.items():
        cfg = EPTrainerConfig(t1=args.t1, t2=args.t2, rbp_steps=args.t1, lr=0.01, **kw)
        net_cfg = EPNetConfig(in_dim=64, hidden=tuple(args.hidden), n_classes=10, angle_deg=90.0)
        trainers[name] = EPTrainer(net_cfg, cfg, device=args.device)
        trainers[name].update(x, y)  # warm-up (first forward-mode AD call initialises torch.func)
    wall = {k: [] for k in METHODS}
    cpu = {k: [] for k in METHODS}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            _sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.update(x, y)
            _sync(args.device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    rows = {}
    bp_wall, bp_cpu = np.median(wall["BP (RBP)"]), np.median(cpu["BP (RBP)"])
    lines = [
        "| method | samples/s (wall, median) | samples/s (CPU time) | step time vs BP (CPU) |",
        "|---|---|---|---|",
    ]
    for name in METHODS:
        w, c = float(np.median(wall[name])), float(np.median(cpu[name]))
        rows[name] = {
            "samples_per_s_wall": args.batch / w,
            "samples_per_s_cpu": args.batch / c,
            "ratio_vs_bp_cpu": c / bp_cpu,
            "ratio_vs_bp_wall": w / bp_wall,
        }
        lines.append(
            f"| {name} | {args.batch / w:.0f} | {args.batch / c:.0f} | {c / bp_cpu:.2f}x |"
        )
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"one training step, batch {args.batch}, 64-{args.hidden}-10, T1 {args.t1}, T2 {args.t2}, "
        f"{args.repeats} interleaved repeats, {args.threads} thread(s), device {dev}"
    )
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"config": vars(args) | {"out": str(args.out)}, "device": dev, "rows": rows}
    tag = "_quick" if args.quick else f"_{args.device.split(':')[0]}"
    write_text(args.out / f"ep_throughput{tag}.json", json.dumps(payload, indent=1))
    return rows


if __name__ == "__main__":
    main()
