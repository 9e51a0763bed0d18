"""Benchmark: SET actor forward+backward throughput (states/s) against the MLP and the limb
transformer, batch 256, measured side by side in one run (medians over repeats).

    python experiments/set_throughput.py            # reference sizes, 14-limb padding
    python experiments/set_throughput.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from gymnasium import spaces

from envs.layout import ObsLayout
from saferl.common import default_device
from saferl.policies import build_actor


def states(batch: int, max_limbs: int, seed: int = 0) -> torch.Tensor:
    """Random flat observations of full (unpadded) chains of ``max_limbs`` limbs."""
    gen = torch.Generator().manual_seed(seed)
    layout = ObsLayout(max_limbs)
    obs = torch.randn(batch, layout.flat_dim, generator=gen)
    _, _, s1, m1, _ = layout.bounds()
    obs[:, s1:m1] = 1.0
    obs[:, m1:] = torch.arange(max_limbs) - 1.0
    return obs


def time_actor(actor: torch.nn.Module, obs: torch.Tensor, iters: int, device: str) -> float:
    """Seconds per forward+backward of ``actor`` on ``obs`` (mean over ``iters``)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        actor(obs).square().mean().backward()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        actor.zero_grad(set_to_none=True)
        actor(obs).square().mean().backward()
    sync()
    return (time.perf_counter() - start) / iters


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--max-limbs", type=int, default=14)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default=default_device())
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    configs = {"set": None, "transformer": None, "mlp": None}  # reference sizes
    if args.quick:
        args.batch, args.max_limbs, args.repeats, args.iters = 32, 4, 2, 1
        configs = {"set": {"width": 16, "ff": 32, "layers": 1, "channels": 4},
                   "transformer": {"width": 16, "ff": 32, "layers": 1},
                   "mlp": {"hidden": [32]}}  # fmt: skip
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = ObsLayout(args.max_limbs)
    obs_space = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
    act_space = spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)
    obs = states(args.batch, args.max_limbs).to(args.device)
    actors = {k: build_actor(k, obs_space, act_space, c, args.device) for k, c in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in actors}
    ratios: list[float] = []
    for _ in range(args.repeats):  # interleaved, so load changes hit every model alike
        for kind, actor in actors.items():
            times[kind].append(time_actor(actor, obs, args.iters, args.device))
        ratios.append(times["set"][-1] / times["mlp"][-1])
    head = f"actor forward+backward, batch {args.batch}, {args.max_limbs} limbs, "
    print(head + f"device {args.device}, {args.threads} thread(s), median of {args.repeats}\n")
    print("| policy | params | states/s | time vs MLP |")
    print("|---|---|---|---|")
    base = float(np.median(times["mlp"]))
    for kind, actor in actors.items():
        med = float(np.median(times[kind]))
        n = sum(p.numel() for p in actor.parameters())
        print(f"| {kind} | {n:,} | {args.batch / med:,.0f} | {med / base:.1f}x |")
    print(f"\nSET/MLP time ratio per repeat: median {np.median(ratios):.1f} "
          f"(min {min(ratios):.1f}, max {max(ratios):.1f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
