"""Equivariance audit (NERO-style): rotate the scene through 360 degrees about the vertical
axis and plot, per policy, the change of actions along the orbit and the return of the rotated
episode. Trained actors are read from ``--runs`` (``<kind>_seed0`` folders written by
experiments/set_suite.py); where a run is missing, a randomly initialised actor stands in
(labelled "init").

    python experiments/set_audit.py
    python experiments/set_audit.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from gymnasium import spaces

import envs
from envs.layout import ObsLayout
from saferl.online import load_actor, suite_agents, suite_max_limbs
from saferl.policies import action_orbit, build_actor, orbit_angles, plot_orbits, return_orbit


def env_states(agents: list[str], max_limbs: int, per_agent: int, seed: int) -> torch.Tensor:
    """Flat observations of random-action rollouts of ``agents`` (one mixed-morphology batch)."""
    rows = []
    for i, agent in enumerate(agents):
        env = envs.make(envs.env_id(agent), max_limbs=max_limbs)
        obs, _ = env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
        for _ in range(per_agent):
            rows.append(obs)
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
        env.close()
    return torch.as_tensor(np.stack(rows), dtype=torch.float32)


def actors_for(args: argparse.Namespace, max_limbs: int) -> dict[str, torch.nn.Module]:
    """name -> actor: trained ones from ``--runs`` when present, else freshly initialised."""
    layout = ObsLayout(max_limbs)
    obs_space = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
    act_space = spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)
    small = {
        "set": {"width": 32, "ff": 64, "layers": 2, "channels": 8},
        "transformer": {"width": 32, "ff": 64, "layers": 2},
        "mlp": {"hidden": [256, 256]},
    }
    actors = {}
    for kind in args.kinds:
        folder = os.path.join(args.runs, f"{kind}_seed0")
        if os.path.exists(os.path.join(folder, "model.safetensors")) and not args.quick:
            actors[f"{kind} (trained)"] = load_actor(folder, device="cpu")
        else:
            torch.manual_seed(0)
            actors[f"{kind} (init)"] = build_actor(kind, obs_space, act_space, small[kind], "cpu")
    return actors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="Hopper++")
    p.add_argument("--kinds", nargs="+", default=["set", "transformer", "mlp"])
    p.add_argument("--runs", default="experiments/results/set_suite")
    p.add_argument("--steps", type=int, default=24, help="angles on the orbit")
    p.add_argument("--horizon", type=int, default=200, help="steps of each rotated episode")
    p.add_argument("--agent", default="hopper_4b", help="agent of the return orbit")
    p.add_argument("--out", default="experiments/results/set_audit.png")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.horizon = 4, 10
    torch.set_num_threads(1)
    agents = suite_agents(args.suite, "train") + suite_agents(args.suite, "heldout")
    max_limbs = suite_max_limbs(agents)
    obs = env_states(agents, max_limbs, per_agent=4 if args.quick else 32, seed=0)
    angles = orbit_angles(args.steps)
    action_curves, return_curves = {}, {}
    for name, actor in actors_for(args, max_limbs).items():
        action_curves[name] = action_orbit(actor, obs, angles)
        return_curves[name] = return_orbit(
            actor, envs.env_id(args.agent), angles, seed=3, horizon=args.horizon,
            max_limbs=max_limbs,
        )  # fmt: skip
    print(f"{args.suite}: {len(obs)} states of {len(agents)} agents, {args.steps} rotations; "
          f"return orbit on {args.agent}, {args.horizon} steps\n")  # fmt: skip
    print("| policy | max abs Δaction along orbit | return min..max along orbit |")
    print("|---|---|---|")
    for name in action_curves:
        r = return_curves[name]
        print(f"| {name} | {action_curves[name].max():.1e} | {r.min():.1f} .. {r.max():.1f} |")
    root, ext = os.path.splitext(args.out)
    plot_orbits(angles, action_curves, "max |Δ action| vs unrotated", args.out,
                f"{args.suite}: action change along the rotation orbit")  # fmt: skip
    plot_orbits(angles, return_curves, f"return ({args.horizon} steps)", f"{root}_return{ext}",
                f"{args.agent}: return of the rotated episode")  # fmt: skip
    print(f"\nplots: {args.out}, {root}_return{ext}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
