"""Train SET, the limb transformer and the MLP with multi-morphology TD3 on one suite; zero-shot
evaluation on its held-out agents.

Prints the table (return mean ± sd over seeds; in-suite = mean over the training agents,
held-out = mean over the held-out agents, each from ``--eval-episodes`` deterministic episodes)
and writes the learning-curve plot. Every run is saved under ``--out/<kind>_seed<k>/`` (SB3 zip,
safetensors actor, JSON config and metrics); finished runs are reused unless ``--fresh``.

    python experiments/set_suite.py --suite Hopper++ --steps 6000 --seeds 0 1
    python experiments/set_suite.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from saferl.common.io import save_figure, write_text
from saferl.online import TD3Config, evaluate, load_actor, save_run, suite_max_limbs, train
from saferl.policies import invariance_error, orbit_angles

NETS = {
    "set": {"width": 32, "ff": 64, "heads": 2, "layers": 2, "channels": 8},
    "transformer": {"width": 32, "ff": 64, "heads": 2, "layers": 2},
    "mlp": {"hidden": [256, 256]},
}
"""Network sizes used on CPU (reference sizes are 128/256/2 heads/3 layers/m=30)."""
QUICK_NETS = {
    "set": {"width": 16, "ff": 32, "heads": 2, "layers": 1, "channels": 4},
    "transformer": {"width": 16, "ff": 32, "heads": 2, "layers": 1},
    "mlp": {"hidden": [32, 32]},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="Hopper++")
    p.add_argument("--kinds", nargs="+", default=["set", "transformer", "mlp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=6_000, help="transitions over all agents")
    p.add_argument("--learning-starts", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--out", default="experiments/results/set_suite")
    p.add_argument("--fresh", action="store_true", help="retrain runs that already exist")
    p.add_argument("--quick", action="store_true", help="tiny budget (for the test)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, kind: str, seed: int) -> TD3Config:
    nets = QUICK_NETS if args.quick else NETS
    return TD3Config(
        suite=args.suite, policy=kind, net_config=nets[kind], total_steps=args.steps,
        learning_starts=args.learning_starts, batch_size=args.batch_size,
        learning_rate=args.lr, max_grad_norm=args.max_grad_norm, seed=seed,
        eval_episodes=args.eval_episodes, eval_max_steps=50 if args.quick else None,
        buffer_size=max(args.steps, 1000),
    )  # fmt: skip


def run_one(args: argparse.Namespace, kind: str, seed: int) -> dict:
    """Train (or reuse) one run; its metrics plus the trained actor's invariance error."""
    folder = os.path.join(args.out, f"{kind}_seed{seed}")
    metrics_path = os.path.join(folder, "metrics.json")
    if not args.fresh and os.path.exists(metrics_path):
        with open(metrics_path) as handle:
            return json.load(handle)
    print(f"[set_suite] training {kind} seed {seed} for {args.steps} steps", flush=True)
    result = train(run_config(args, kind, seed), device=args.device)
    save_run(result, folder)
    actor = load_actor(folder, device="cpu")
    obs = result.model.replay_buffer.sample(256).observations.cpu()
    error = invariance_error(actor, obs, orbit_angles(24))
    with open(metrics_path) as handle:
        metrics = json.load(handle)
    metrics["invariance_error"] = error
    write_text(metrics_path, json.dumps(metrics, indent=2))
    return metrics


def split_mean(metrics: dict, split: str) -> float:
    """Mean evaluation return over the agents of ``split``."""
    values = [v["return_mean"] for v in metrics["evaluation"].values() if v["split"] == split]
    return float(np.mean(values)) if values else float("nan")


class ReferenceActor(torch.nn.Module):
    """Zero torques, or uniform random torques in [-1, 1] (seeded): rows of context."""

    def __init__(self, action_dim: int, random: bool, seed: int = 0) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives evaluate() a device
        self.action_dim, self.random = action_dim, random
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.random:
            return torch.zeros(obs.shape[0], self.action_dim)
        return torch.rand(obs.shape[0], self.action_dim, generator=self.gen) * 2 - 1


def reference_rows(args: argparse.Namespace, runs: dict[tuple[str, int], dict]) -> list[str]:
    """Table rows for zero and random torques under the same evaluation protocol."""
    evaluation = next(iter(runs.values()))["evaluation"]
    heldout = sorted(a for a, v in evaluation.items() if v["split"] == "heldout")
    max_limbs = suite_max_limbs(list(evaluation))
    rows = []
    for name, random in (("zero torques", False), ("random torques", True)):
        per_seed: dict[str, list[float]] = {a: [] for a in evaluation}
        for seed in args.seeds:
            actor = ReferenceActor(max_limbs * 3, random, seed)
            for agent in evaluation:
                stats = evaluate(actor, agent, max_limbs, args.eval_episodes, seed=10_000 + seed,
                                 max_steps=50 if args.quick else None)  # fmt: skip
                per_seed[agent].append(stats["return_mean"])

        def fmt(split: str, per_seed=per_seed) -> str:
            agents = [a for a, v in evaluation.items() if v["split"] == split]
            values = np.mean([per_seed[a] for a in agents], 0)
            return f"{np.mean(values):.1f} ± {np.std(values):.1f}"

        cells = [f"*{name}*", fmt("train"), fmt("heldout")]
        cells += [f"{np.mean(per_seed[a]):.1f} ± {np.std(per_seed[a]):.1f}" for a in heldout]
        rows.append("| " + " | ".join([*cells, "–", "–"]) + " |")
    return rows


def table(args: argparse.Namespace, runs: dict[tuple[str, int], dict]) -> str:
    """Markdown table: per kind, in-suite and held-out return mean ± sd over seeds."""
    heldout = sorted({a for m in runs.values() for a, v in m["evaluation"].items()
                      if v["split"] == "heldout"})  # fmt: skip
    head = ["policy", "in-suite return", "held-out return", *heldout, "max |Δa| rot.", "min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in args.kinds:
        ms = [runs[(kind, s)] for s in args.seeds]

        def fmt(values: list[float]) -> str:
            return f"{np.mean(values):.1f} ± {np.std(values):.1f}"

        cells = [kind, fmt([split_mean(m, "train") for m in ms]),
                 fmt([split_mean(m, "heldout") for m in ms])]  # fmt: skip
        cells += [fmt([m["evaluation"][a]["return_mean"] for m in ms]) for a in heldout]
        cells.append(f"{max(m.get('invariance_error', float('nan')) for m in ms):.1e}")
        cells.append(f"{np.mean([m['seconds'] for m in ms]) / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + reference_rows(args, runs))


def plot_curves(args: argparse.Namespace, runs: dict[tuple[str, int], dict], path: str) -> None:
    """Training-episode return against transitions, binned, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, args.steps, 13)
    centres = (edges[1:] + edges[:-1]) / 2
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for kind in args.kinds:
        per_seed = []
        for seed in args.seeds:
            eps = runs[(kind, seed)]["episodes"]
            steps = np.array([e["step"] for e in eps], dtype=float)
            rets = np.array([e["return"] for e in eps], dtype=float)
            idx = np.digitize(steps, edges) - 1
            per_seed.append([rets[idx == b].mean() if (idx == b).any() else np.nan
                             for b in range(len(centres))])  # fmt: skip
        per_seed = np.array(per_seed)
        seen = np.isfinite(per_seed).any(0)  # bins where some seed finished an episode
        mean = np.nanmean(per_seed[:, seen], 0) if seen.any() else np.array([])
        ax.plot(centres[seen], mean, marker="o", ms=3, label=kind)
    ax.axvline(args.learning_starts, color="grey", ls=":", lw=1)
    ax.set_xlabel("transitions (all training agents)")
    ax.set_ylabel("training episode return")
    ax.set_title(f"{args.suite}, TD3, {len(args.seeds)} seeds")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.steps, args.learning_starts, args.seeds = 180, 120, args.seeds[:1]
        args.batch_size, args.eval_episodes = 32, 1
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = {(k, s): run_one(args, k, s) for k in args.kinds for s in args.seeds}
    print(f"\n{args.suite}: TD3, {args.steps} transitions per run, seeds {args.seeds}, "
          f"{args.eval_episodes} eval episodes per agent, CPU\n")  # fmt: skip
    print(table(args, runs))
    plot_path = os.path.join(args.out, "set_suite_curves.png")
    plot_curves(args, runs, plot_path)
    print(f"\nplot: {plot_path}  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
