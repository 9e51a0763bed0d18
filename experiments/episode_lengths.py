"""Episode length and return of every 3D agent under zero and uniformly random torques.

A body that cannot stand for a few dozen steps under zero torques is a bug (or a body too hard
to balance); this table shows how long episodes last before any learning. For every catalogue
agent, ``--seeds`` episodes (seeds 0.., up to 1000 steps) with zero torques and with i.i.d.
uniform torques in [-1, 1] (numpy generator seeded with the episode seed); the table gives the
per-family means (and the range of per-agent means). Results are stored under ``--label`` in
``experiments/results/episode_lengths.json`` so several labels (e.g. bodies before and after a
change) print side by side.

    python experiments/episode_lengths.py --label after --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

import envs
from saferl.common.io import write_text
from saferl.data import rollout

RESULTS = Path(__file__).resolve().parent / "results" / "episode_lengths.json"
POLICIES = ("zero", "random")


def episode(agent: str, policy: str, seed: int, max_steps: int = 1000) -> tuple[int, float]:
    """(length, return) of one episode of ``agent`` under ``policy`` (``saferl.data.rollout``;
    the random torques come from a generator seeded with the episode seed)."""
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        shape = (len(obs), dim)
        return np.zeros(shape) if policy == "zero" else rng.uniform(-1, 1, shape)

    def env_fn():
        return envs.make(envs.env_id(agent), max_episode_steps=max_steps)

    with env_fn() as probe:
        dim = probe.action_space.shape[0]
    runs = rollout(act, env_fn, 1, seed, record=False)
    return int(runs.lengths[0]), float(runs.returns[0])


def measure(seeds: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{agent: {policy: {"length": [...], "return": [...]}}}`` over seeds 0..seeds-1."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for agent in sorted(envs.catalogue().agents):
        out[agent] = {}
        for policy in POLICIES:
            runs = [episode(agent, policy, s) for s in range(seeds)]
            out[agent][policy] = {"length": [r[0] for r in runs], "return": [r[1] for r in runs]}
    return out


def family_table(results: dict[str, dict]) -> str:
    """Markdown: per family and label, mean length and return under zero and random torques."""
    rows = [
        "| family | bodies | zero: length (agent range) | zero: return | random: length "
        "(agent range) | random: return |",
        "|---|---|---|---|---|---|",
    ]
    agents = envs.catalogue().agents
    for family in ("hopper", "walker", "humanoid", "cheetah"):
        for label, per_agent in results.items():
            names = [a for a in per_agent if agents[a].family == family]
            cells = []
            for policy in POLICIES:
                lengths = [statistics.mean(per_agent[a][policy]["length"]) for a in names]
                returns = [statistics.mean(per_agent[a][policy]["return"]) for a in names]
                cells += [
                    f"{statistics.mean(lengths):.0f} ({min(lengths):.0f}-{max(lengths):.0f})",
                    f"{statistics.mean(returns):.1f}",
                ]
            rows.append(f"| {family} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="current", help="name of this measurement")
    parser.add_argument("--seeds", type=int, default=3, help="episodes per agent and policy")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file of all labels")
    parser.add_argument("--quick", action="store_true", help="1 seed, results not stored")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    current = measure(1 if args.quick else args.seeds)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.label] = current
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(results, indent=1))
    print(family_table(results if not args.quick else {args.label: current}))
    return current


if __name__ == "__main__":
    main()
