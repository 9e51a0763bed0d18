"""``saferl bench DATASET...``: the DSRL benchmark grid over dataset files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run offline safe-RL methods on DSRL-format datasets (DSRL protocol)",
        description="Train each method on each dataset for each seed (and threshold, for "
        "threshold-conditioned methods), evaluate with the DSRL protocol and write "
        "<out>/<prefix>_table.md, <prefix>_scatter.png and <prefix>_rows.json.",
    )
    p.add_argument("datasets", nargs="+", help="DSRL-format HDF5 files (saferl.data)")
    p.add_argument("--methods", nargs="+", default=["bc_all", "bc_safe", "bcq_lag", "fisor"],
                   choices=["bc_all", "bc_safe", "bcq_lag", "fisor"])  # fmt: skip
    p.add_argument("--thresholds", type=float, nargs="+", default=None,
                   help="cost thresholds κ (default: each dataset's cost_thresholds)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes")
    p.add_argument("--max-eval-steps", type=int, default=None, help="truncate evaluation")
    p.add_argument("--fisor-iterations", type=int, default=1_000_000)
    p.add_argument("--fisor-actor-batch", type=int, default=2048,
                   help="actor transitions per iteration (split in two updates)")  # fmt: skip
    p.add_argument("--fisor-critic-batch", type=int, default=256)
    p.add_argument("--fisor-width", type=int, default=256, help="LN-ResNet width")
    p.add_argument("--bc-steps", type=int, default=100_000)
    p.add_argument("--bcq-steps", type=int, default=100_000)
    p.add_argument("--bcq-batch", type=int, default=512)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--out", default="bench_results", help="output folder")
    p.add_argument("--prefix", default="bench", help="output file prefix")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from saferl.offline import BCConfig, BCQLagConfig, FISORConfig
    from saferl.offline.bench import BenchConfig, load_tasks, run_bench, write_results

    torch.set_num_threads(args.threads)
    fisor = FISORConfig(
        iterations=args.fisor_iterations,
        actor_batch_size=args.fisor_actor_batch,
        critic_batch_size=args.fisor_critic_batch,
        actor_width=args.fisor_width,
        log_every=max(1, args.fisor_iterations // 10),
    )
    config = BenchConfig(
        methods=tuple(args.methods),
        thresholds=tuple(args.thresholds) if args.thresholds else None,
        seeds=tuple(args.seeds),
        episodes=args.episodes,
        max_eval_steps=args.max_eval_steps,
        fisor=fisor,
        bc=BCConfig(steps=args.bc_steps),
        bcq_lag=BCQLagConfig(steps=args.bcq_steps, batch_size=args.bcq_batch),
        device=args.device,
    )
    rows = run_bench(load_tasks(args.datasets), config)
    summary, table = write_results(rows, args.out, args.prefix)
    print(table)
    Path(args.out, f"{args.prefix}_config.json").write_text(
        json.dumps({"argv": vars(args) | {"func": None}}, indent=1, default=str)
    )
    return 0
