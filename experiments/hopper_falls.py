"""How the episodes of trained Hopper++ policies end: which termination, and which way the torso
leans when it does.

For zero torques and each run folder given (``saferl train-online`` / ``set_suite.py`` output),
10 deterministic episodes per training agent (reset seeds 100..109). At the last step it records
the episode length and return, the torso height over its rest height, the tilt of the torso's
z axis, and that axis's horizontal lean split into the part along the target direction (forward
> 0) and across it. Writes ``experiments/results/online/hopper_falls.{json,md}``.

    python experiments/hopper_falls.py experiments/results/online/hopper_suite/mlp_seed0 ...
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

import envs
from envs.catalogue import FAMILIES
from saferl.common.io import write_json, write_text
from saferl.online.td3 import load_actor

OUT = Path(__file__).parent / "results" / "online"
AGENTS = ("hopper_3", "hopper_4", "hopper_5")


def episode_end(agent: str, actor: torch.nn.Module | None, seed: int, max_limbs: int) -> dict:
    """Length, return and the torso's state at the last step of one deterministic episode."""
    env = envs.make(envs.env_id(agent), max_limbs=max_limbs)
    obs, _ = env.reset(seed=seed)
    sim = env.unwrapped
    length, ret, done = 0, 0.0, False
    while not done:
        if actor is None:
            action = np.zeros(env.action_space.shape, np.float32)
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs[None], dtype=torch.float32)).numpy()[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        length, ret, done = length + 1, ret + float(reward), terminated or truncated
    up = sim.data.xmat[1].reshape(3, 3)[:, 2]  # the torso's z axis (up at rest)
    tx, ty = sim._target_2d
    env.close()
    return {
        "length": length,
        "return": ret,
        "terminated": bool(terminated),
        "height_ratio": float(sim.data.xpos[1][2] / sim.morph.torso_height),
        "tilt_deg": math.degrees(math.acos(max(-1.0, min(1.0, float(up[2]))))),
        "lean_forward": float(up[0] * tx + up[1] * ty),
        "lean_side": float(-up[0] * ty + up[1] * tx),
    }


def summarise(ends: list[dict], band_low: float) -> dict:
    """Means over episodes, and how many ended by height (below the band) or by tilt alone."""
    arr = {k: np.array([e[k] for e in ends], dtype=float) for k in ends[0]}
    low = arr["height_ratio"] <= band_low  # the env needs height > band_low × rest height
    return {
        "episodes": len(ends),
        "length": float(arr["length"].mean()),
        "return": float(arr["return"].mean()),
        "ended_by_height": int((low & (arr["terminated"] > 0)).sum()),
        "ended_by_tilt_only": int((~low & (arr["terminated"] > 0)).sum()),
        "tilt_deg": float(arr["tilt_deg"].mean()),
        "leaning_forward": int((arr["lean_forward"] > 0).sum()),
        "abs_lean_forward": float(np.abs(arr["lean_forward"]).mean()),
        "abs_lean_side": float(np.abs(arr["lean_side"]).mean()),
    }


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="run folders (model.safetensors + config.json)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    low = FAMILIES["hopper"].height_band[0]
    policies = {"zero torques": None, **{str(r): load_actor(r) for r in args.runs}}
    rows = []
    for name, actor in policies.items():
        for agent in AGENTS:
            ends = [episode_end(agent, actor, 100 + i, 5) for i in range(args.episodes)]
            rows.append({"policy": name, "agent": agent, **summarise(ends, low)})
    head = ("| policy | agent | length | return | ended by height / by tilt | tilt at end (deg) "
            "| leaning forward | mean lean forward / sideways |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {Path(r['policy']).name} | {r['agent']} | {r['length']:.0f} | {r['return']:.0f} "
            f"| {r['ended_by_height']} / {r['ended_by_tilt_only']} | {r['tilt_deg']:.0f} "
            f"| {r['leaning_forward']}/{r['episodes']} "
            f"| {r['abs_lean_forward']:.2f} / {r['abs_lean_side']:.2f} |"
        )
    text = (f"Hopper++ episode ends, {args.episodes} deterministic episodes per agent (reset "
            f"seeds 100..), height band low {low} × rest height, tilt limit "
            f"{FAMILIES['hopper'].max_tilt} rad.\n\n" + "\n".join(lines))  # fmt: skip
    out = Path(args.out)
    write_json(out / "hopper_falls.json", {"rows": rows}, indent=1)
    write_text(out / "hopper_falls.md", text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
