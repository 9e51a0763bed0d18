"""SET, the limb transformer and the MLP trained with multi-morphology TD3 on one suite
(default Hopper++: train hopper_3/4/5, held-out hopper_4b), beside zero and random torques.

Protocol (issue 14): one update per transition, ``--eval-every`` transitions an evaluation of
``--eval-episodes`` deterministic episodes per training and held-out agent (return, episode
length, mean velocity along the target); the baselines run the same agents and episodes (reset
seeds). Each (policy, seed) run is a cell of a :mod:`saferl.grid` grid that checkpoints every
``--checkpoint-every`` transitions: a run that was stopped continues where its last checkpoint
left it, finished runs are kept (their actor, config and metrics under ``--out/<suite>/``).

Writes ``<out>/<name>_summary.json`` (per policy and seed: transitions, updates, in-suite and
held-out return, episode length, target velocity, the baselines, the trained actor's largest
action change over 24 rotations about the vertical on env states, in float64 and float32, and
float32's round-off on the same states), ``<name>_table.md`` and
``<name>_curves.png``, where ``<name>`` is e.g. ``hopper_suite``.

    python experiments/set_suite.py --workers 2                 # the issue's budget (hours)
    python experiments/set_suite.py --kinds mlp --seeds 0 1 2   # part of it
    python experiments/set_suite.py --quick --out /tmp/suite    # seconds (for the test)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import envs
from saferl.common.io import save_figure, write_json, write_text
from saferl.data.rollout import rollout
from saferl.grid import Cell, run_grid
from saferl.online import TD3Config, load_actor, suite_max_limbs
from saferl.online.td3 import RUN_FILES, episode_stats, suite_agents, train_cell
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
ROTATIONS = 24
"""Rotations about the vertical for the trained actors' invariance check."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="Hopper++")
    p.add_argument("--kinds", nargs="+", default=["set", "mlp", "transformer"],
                   choices=sorted(NETS))  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--transformer-seeds",
        nargs="+",
        type=int,
        default=[0],
        help="seeds of the transformer (the issue asks for at least one)",
    )
    p.add_argument("--steps", type=int, default=100_000, help="transitions per run (all agents)")
    p.add_argument(
        "--learning-starts",
        type=int,
        default=None,
        help="random warm-up transitions (default: 5,000 per training agent)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--buffer-size", type=int, default=100_000,
                   help="replay capacity (FIFO), fixed whatever --steps, so that a run trained "
                        "longer with a larger --steps resumes with its own buffer")  # fmt: skip
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1, help="runs side by side (Ray tasks)")
    p.add_argument("--out", default="experiments/results/online")
    p.add_argument("--quick", action="store_true", help="tiny budget (for the test)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.learning_starts, args.batch_size = 180, 120, 32
        args.buffer_size = 1000
        args.eval_every, args.eval_episodes, args.checkpoint_every = 90, 1, 90
        args.seeds, args.transformer_seeds = args.seeds[:1], args.transformer_seeds[:1]
    return args


def name_of(suite: str) -> str:
    """File stem of a suite's results, e.g. Hopper++ -> hopper_suite."""
    return suite.rstrip("+").lower() + "_suite"


def run_config(args: argparse.Namespace, kind: str, seed: int) -> TD3Config:
    """The TD3 config of one (policy, seed) run."""
    nets = QUICK_NETS if args.quick else NETS
    return TD3Config(
        suite=args.suite, policy=kind, net_config=nets[kind], total_steps=args.steps,
        learning_starts=args.learning_starts, batch_size=args.batch_size,
        learning_rate=args.lr, max_grad_norm=args.max_grad_norm, gamma=args.gamma, seed=seed,
        eval_episodes=args.eval_episodes, eval_every=args.eval_every,
        eval_max_steps=50 if args.quick else None, buffer_size=args.buffer_size,
    )  # fmt: skip


def seeds_of(args: argparse.Namespace, kind: str) -> list[int]:
    return args.transformer_seeds if kind == "transformer" else args.seeds


def cells(args: argparse.Namespace, runs: Path) -> list[Cell]:
    """One resumable training cell per (policy, seed)."""
    out = []
    for kind in args.kinds:
        for seed in seeds_of(args, kind):
            folder = (runs / f"{kind}_seed{seed}").absolute()
            kwargs = {"config": run_config(args, kind, seed), "device": args.device,
                      "out": str(folder), "checkpoint_every": args.checkpoint_every}  # fmt: skip
            outputs = tuple(str(folder / n) for n in RUN_FILES)
            out.append(Cell(f"{kind}_seed{seed}", train_cell, kwargs, outputs=outputs))
    return out


class Torques:
    """Zero torques, or uniform random torques in [-1, 1] from a seeded generator."""

    def __init__(self, action_dim: int, random: bool, seed: int) -> None:
        self.action_dim, self.random = action_dim, random
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        shape = (len(obs), self.action_dim)
        return self.rng.uniform(-1.0, 1.0, shape) if self.random else np.zeros(shape)


def baselines(args: argparse.Namespace, agents: list[str], max_limbs: int) -> dict[str, Any]:
    """Per baseline, seed and agent: :func:`episode_stats` on the evaluation's episodes."""
    out: dict[str, Any] = {"zero": {}, "random": {}}
    seeds = sorted({s for k in args.kinds for s in seeds_of(args, k)})
    for name in out:
        for seed in seeds:
            policy = Torques(3 * max_limbs, name == "random", seed)
            out[name][seed] = {}
            for agent in agents:
                runs = rollout(policy, lambda a=agent: envs.make(envs.env_id(a),
                                                                 max_limbs=max_limbs),
                               args.eval_episodes, 10_000 + seed, record=False,
                               max_steps=50 if args.quick else None,
                               sum_info=("reward_forward",))  # fmt: skip
                out[name][seed][agent] = episode_stats(runs)
    return out


def env_states(actor: torch.nn.Module, agents: list[str], max_limbs: int, n: int = 512) -> Any:
    """Up to ``n`` observations from one deterministic episode of ``actor`` per agent."""
    obs = []
    for agent in agents:
        runs = rollout(lambda o: actor(torch.as_tensor(o, dtype=torch.float32)).detach().numpy(),
                       lambda a=agent: envs.make(envs.env_id(a), max_limbs=max_limbs), 1, 20_000,
                       max_steps=200)  # fmt: skip
        obs.append(runs.data["observations"])
    states = np.concatenate(obs)
    pick = np.linspace(0, len(states) - 1, min(n, len(states))).astype(int)
    return torch.as_tensor(states[pick])


def rotation_invariance(actor: torch.nn.Module, states: torch.Tensor) -> dict[str, float]:
    """Largest action change over the rotations, in float64 (the function's invariance) and in
    float32 (as deployed), beside float32's own round-off on the unrotated states
    (max |a_float32 - a_float64|): a float32 change of that size is round-off, not a symmetry
    the policy breaks."""
    angles = orbit_angles(ROTATIONS)
    double = copy.deepcopy(actor).double()
    roundoff = (actor(states).double() - double(states.double())).abs().max()
    return {"rotation_invariance_max_abs": invariance_error(double, states.double(), angles),
            "rotation_invariance_max_abs_float32": invariance_error(actor, states, angles),
            "float32_roundoff_max_abs": float(roundoff)}  # fmt: skip


def split_mean(per_agent: dict[str, dict], agents: list[str], key: str) -> float:
    return float(np.mean([per_agent[a][key] for a in agents]))


def run_row(args, kind, seed, folder, base, train_agents, heldout, max_limbs) -> dict[str, Any]:
    """The summary row of one finished run."""
    metrics = json.loads((folder / "metrics.json").read_text())
    per_agent, run = metrics["evaluation"], metrics["run"]
    actor = load_actor(str(folder), device="cpu")
    with torch.no_grad():
        states = env_states(actor, train_agents + heldout, max_limbs)
        invariance = rotation_invariance(actor, states)
    zero, rand = base["zero"][seed], base["random"][seed]
    row = {"policy": kind, "seed": seed, "transitions": run["transitions_done"],
           "updates": run["updates_done"], "update_to_data": run["update_to_data"],
           "seconds": metrics["seconds"]}  # fmt: skip
    for split, agents in (("in_suite", train_agents), ("heldout", heldout)):
        row[f"{split}_return"] = split_mean(per_agent, agents, "return_mean")
        row[f"{split}_episode_length"] = split_mean(per_agent, agents, "length_mean")
        row[f"{split}_target_velocity"] = split_mean(per_agent, agents, "target_velocity")
        row[f"{split}_cost"] = split_mean(per_agent, agents, "cost_mean")
    row["zero_torque_return"] = split_mean(zero, train_agents, "return_mean")
    row["random_torque_return"] = split_mean(rand, train_agents, "return_mean")
    row["zero_torque_heldout_return"] = split_mean(zero, heldout, "return_mean")
    row["random_torque_heldout_return"] = split_mean(rand, heldout, "return_mean")
    row["return_over_zero_torque"] = row["in_suite_return"] / row["zero_torque_return"]
    row.update(invariance)
    row["per_agent"] = per_agent
    row["curve"] = metrics.get("curve", [])
    return row


FIELDS = (
    "in_suite_return", "heldout_return", "in_suite_episode_length", "in_suite_target_velocity",
    "heldout_episode_length", "heldout_target_velocity",
)  # fmt: skip
KEYS = {"return": "return_mean", "episode_length": "length_mean",
        "target_velocity": "target_velocity"}  # fmt: skip
"""Summary field suffix -> key of :func:`episode_stats`."""


def table(rows: list[dict], base: dict, train_agents: list[str], heldout: list[str]) -> str:
    """Markdown table: per policy mean ± sd over seeds; baselines below."""
    head = ["policy", "seeds", "transitions", "in-suite return", "held-out return",
            "in-suite length", "in-suite v_target", "held-out length", "held-out v_target",
            "return / zero", "max |Δa| rot. f64 / f32", "min/run"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(values: list[float], digits: int = 1) -> str:
        return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"

    for kind in dict.fromkeys(r["policy"] for r in rows):
        group = [r for r in rows if r["policy"] == kind]
        cells = [kind, ",".join(str(r["seed"]) for r in group), str(group[0]["transitions"])]
        for f in FIELDS:
            cells.append(ms([r[f] for r in group], 2 if "velocity" in f else 1))
        cells.append(ms([r["return_over_zero_torque"] for r in group], 2))
        cells.append(
            f"{max(r['rotation_invariance_max_abs'] for r in group):.0e} / "
            f"{max(r['rotation_invariance_max_abs_float32'] for r in group):.0e}"
        )
        cells.append(f"{np.mean([r['seconds'] for r in group]) / 60:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    for name, label in (("zero", "*zero torques*"), ("random", "*random torques*")):
        seeds = sorted(base[name])
        cells = [label, ",".join(map(str, seeds)), "–"]
        for f in FIELDS:
            agents = train_agents if f.startswith("in_suite") else heldout
            key = KEYS[f.removeprefix("in_suite_").removeprefix("heldout_")]
            values = [split_mean(base[name][s], agents, key) for s in seeds]
            cells.append(ms(values, 2 if "velocity" in f else 1))
        lines.append("| " + " | ".join(cells + ["–", "–", "–"]) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], base: dict, train_agents, heldout, title: str, path) -> None:
    """Evaluation return (in-suite, held-out) and in-suite target velocity against transitions:
    mean ± sd over seeds per policy, baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = (
        ("in-suite return", train_agents, "return_mean"),
        ("held-out return", heldout, "return_mean"),
        ("in-suite velocity along target (m/s)", train_agents, "target_velocity"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (label, agents, key) in zip(axes, panels, strict=True):
        for kind in dict.fromkeys(r["policy"] for r in rows):
            curves = []
            for r in (r for r in rows if r["policy"] == kind):
                steps = sorted({c["step"] for c in r["curve"]})
                curves.append([np.mean([c[key] for c in r["curve"]
                                        if c["step"] == s and c["agent"] in agents])
                               for s in steps])  # fmt: skip
            n = min(len(c) for c in curves)
            values = np.array([c[:n] for c in curves])
            x = np.array(steps[:n])
            mean, sd = values.mean(0), values.std(0)
            seeds = f"{len(curves)} seed" + ("s" if len(curves) > 1 else "")
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{kind} ({seeds})")
            ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        for name, style in (("zero", "--"), ("random", ":")):
            level = np.mean([split_mean(base[name][s], agents, key) for s in base[name]])
            ax.axhline(level, color="grey", ls=style, lw=1, label=f"{name} torques")
        ax.set_xlabel("transitions (all training agents)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 150), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    name, out = name_of(args.suite), Path(args.out)
    runs = out / name
    train_agents, heldout = suite_agents(args.suite, "train"), suite_agents(args.suite, "heldout")
    max_limbs = suite_max_limbs(train_agents + heldout)
    grid = run_grid(cells(args, runs), runs / "grid", workers=args.workers)
    if grid.failed:
        print(f"{len(grid.failed)} run(s) failed: {grid.failed}", file=sys.stderr)
        return 1
    base = baselines(args, train_agents + heldout, max_limbs)
    rows = [run_row(args, kind, seed, runs / f"{kind}_seed{seed}", base, train_agents, heldout,
                    max_limbs)
            for kind in args.kinds for seed in seeds_of(args, kind)]  # fmt: skip
    text = table(rows, base, train_agents, heldout)
    protocol = (f"{args.suite} (train {', '.join(train_agents)}; held-out {', '.join(heldout)}), "
                f"TD3 at 1 update per transition, {args.steps} transitions per run, "
                f"{args.eval_episodes} deterministic eval episodes per agent every "
                f"{args.eval_every} transitions, lr {args.lr}, γ {args.gamma}, grad-norm clip "
                f"{args.max_grad_norm}, batch {args.batch_size}, CPU 1 thread per run")  # fmt: skip
    print(f"\n{protocol}\n\n{text}")
    write_text(out / f"{name}_table.md", f"{protocol}\n\n{text}\n")
    plot_curves(rows, base, train_agents, heldout, protocol.split(", lr")[0],
                out / f"{name}_curves.png")  # fmt: skip
    summary = {
        "suite": args.suite, "train_agents": train_agents, "heldout_agents": heldout,
        "protocol": protocol,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads_per_run": 1, "device": args.device},
        "configs": {k: run_config(args, k, 0).__dict__ | {"seed": seeds_of(args, k)}
                    for k in args.kinds},
        "runs": [{k: v for k, v in r.items() if k not in ("curve", "per_agent")} for r in rows],
        "per_agent": {f"{r['policy']}_seed{r['seed']}": r["per_agent"] for r in rows},
        "curves": {f"{r['policy']}_seed{r['seed']}": r["curve"] for r in rows},
        "baselines": {n: {str(s): v for s, v in b.items()} for n, b in base.items()},
    }  # fmt: skip
    write_json(out / f"{name}_summary.json", summary, indent=1)
    print(f"\nwrote {out / f'{name}_summary.json'}, {name}_table.md, {name}_curves.png "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
