"""Bounds on the networks the toolkit trains: IBP, CROWN and CROWN-IBP, as the nets are.

Per network (SET, limb-transformer and MLP actors and critics at small and reference sizes;
FISOR's fused Q ensemble and noise network; BC and BCQ-Lag actors; SB3's TD3 and SAC actors):
mean bound width of each method, the CROWN/IBP width ratio, soundness counts (sampled points
of the input box, uniform and corners, and PGD points trying to leave the bounds: violations per
method) and CPU time per 1,000 states (one call on 32 states, scaled, after the calls of the
soundness check: limb nets reuse their traced graphs, the offline ones retrace; SET at reference
size under CROWN: on its one state). Untrained networks at their initialisation;
limb observations are random chains (structure entries exact). Prints the table, writes
experiments/results/certify_networks.json.

    python experiments/certify_networks.py [--quick] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from certify import compute_bounds
from certify.policy import as_actor_module
from envs.layout import ObsLayout
from saferl.common.io import write_json

METHODS = ("ibp", "crown", "crown-ibp")
SMALL = {
    "set": {"width": 32, "ff": 64, "heads": 2, "layers": 2, "channels": 8},
    "transformer": {"width": 32, "ff": 64, "heads": 2, "layers": 2},
    "mlp": {"hidden": [256, 256]},
}
OBS, ACT = 11, 3  # Hopper's sizes for the offline and SB3 networks


class Case(NamedTuple):
    """A network, the function it computes on (N, D) rows, and its input box (B, D)."""

    name: str
    model: nn.Module
    fn: Callable[[Tensor], Tensor]
    lo: Tensor
    hi: Tensor
    eps: float


# ---------------------------------------------------------------------------- networks


def limb_spaces(limbs: int) -> tuple[spaces.Box, spaces.Box]:
    layout = ObsLayout(limbs)
    obs = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
    return obs, spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)


def chains(limbs: int, n_limbs: list[int], gen: torch.Generator) -> Tensor:
    """Flat observations of chains with ``n_limbs[b]`` real limbs."""
    layout = ObsLayout(limbs)
    obs = 0.5 * torch.randn(len(n_limbs), layout.flat_dim, generator=gen)
    _, _, s1, m1, _ = layout.bounds()
    idx = torch.arange(limbs)
    for b, n in enumerate(n_limbs):
        obs[b, s1:m1] = (idx < n).float()
        obs[b, m1:] = torch.where(idx < n, idx - 1.0, -1.0)
    return obs


def limb_cases(kind: str, size: str, states: int, gen: torch.Generator) -> list[Case]:
    """Actor on observations, critic on [obs, actions] (both bounded)."""
    from saferl.policies import build_actor, build_critic
    from saferl.policies.sb3 import CriticAdapter

    limbs, eps = (4, 1e-3) if size == "small" else (3, 1e-4)
    config = SMALL[kind] if size == "small" else None
    obs = chains(limbs, [limbs - (b % 2) for b in range(states)], gen)
    actor = build_actor(kind, *limb_spaces(limbs), config, device="cpu").eval()
    critic = CriticAdapter(build_critic(kind, *limb_spaces(limbs), config, device="cpu")).eval()
    z = torch.cat([obs, torch.rand(states, 3 * limbs, generator=gen) * 2 - 1], 1)
    return [
        Case(f"{kind}-{size} actor", actor, actor, obs - eps, obs + eps, eps),
        Case(f"{kind}-{size} critic", critic, critic, z - eps, z + eps, eps),
    ]


def offline_cases(states: int, reference: bool, gen: torch.Generator) -> list[Case]:
    """FISOR's fused critic ensemble and noise network (time fixed), BC and BCQ-Lag actors."""
    from saferl.offline.bcq_lag import BCQLagConfig, BCQLagNets
    from saferl.offline.bounded import BCQLagPolicy
    from saferl.offline.fisor import FISORConfig, FISORNets
    from saferl.offline.networks import MLP

    small = {"critic_hidden": (32, 32), "actor_width": 32, "actor_blocks": 1, "time_dim": 16}
    size = "reference" if reference else "small"
    fisor = FISORNets(OBS, ACT, FISORConfig() if reference else FISORConfig(**small)).eval()
    sa = torch.randn(states, OBS + ACT, generator=gen)
    q = fisor.critic  # Q_r and Q_h members side by side: (B, 2E)
    cases = [Case(f"fisor-{size} Q ensemble", q, lambda x: q(x).T, sa - 0.01, sa + 0.01, 0.01)]
    t = torch.randint(0, 5, (states, 1), generator=gen).float()
    z = torch.cat([torch.randn(states, ACT + OBS, generator=gen), t], 1)
    e = torch.full_like(z, 1e-3)
    e[:, -1] = 0.0  # diffusion time fixed

    def noise(x: Tensor) -> Tensor:
        return fisor.actor(x[:, :ACT], x[:, ACT : ACT + OBS], x[:, -1])

    cases.append(Case(f"fisor-{size} noise net", fisor.actor, noise, z - e, z + e, 1e-3))
    if reference:
        bc = MLP(OBS, ACT, (256, 256), squash=True)
        s = sa[:, :OBS]
        cases.append(Case("bc actor", bc, bc, s - 0.01, s + 0.01, 0.01))
        policy = BCQLagPolicy(BCQLagNets(OBS, ACT, BCQLagConfig()).eval())
        sz = torch.cat([s, torch.zeros(states, policy.latent)], 1)
        e = torch.zeros_like(sz)
        e[:, :OBS] = 0.01  # latent fixed at the prior mode (deterministic_act)
        cases.append(Case("bcq-lag policy (z=0)", policy, policy, sz - e, sz + e, 0.01))
    return cases


def sb3_cases(states: int, gen: torch.Generator) -> list[Case]:
    """SB3's own TD3 actor and SAC's deterministic (squashed mean) action."""
    import gymnasium as gym
    from stable_baselines3 import SAC, TD3

    class Dummy(gym.Env):
        observation_space = spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
        action_space = spaces.Box(-1.0, 1.0, (ACT,), np.float32)

        def reset(self, seed=None, options=None):
            return np.zeros(OBS, np.float32), {}

        def step(self, a):
            return np.zeros(OBS, np.float32), 0.0, False, False, {}

    s = torch.randn(states, OBS, generator=gen)
    out = []
    for algo in (TD3, SAC):
        net = as_actor_module(algo("MlpPolicy", Dummy(), device="cpu", seed=0).policy.actor)
        out.append(Case(f"sb3 {algo.__name__} actor", net, net, s - 0.01, s + 0.01, 0.01))
    return out


# ---------------------------------------------------------------------------- measurement


def sample_box(lo: Tensor, hi: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """(B, n, D) points: half uniform in the box, half at random corners."""
    u = torch.rand(lo.shape[0], n, lo.shape[1], generator=gen, dtype=lo.dtype)
    u[:, n // 2 :] = u[:, n // 2 :].round()
    return lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)


def pgd_escape(f, lo, hi, lower, upper, steps: int, starts: int, gen) -> Tensor:
    """Points (B, starts, D) found by sign-gradient ascent pushing outputs beyond random sides
    of the bounds, projected onto the box."""
    x = sample_box(lo, hi, starts, gen)
    sign = (torch.randint(0, 2, (lo.shape[0], starts, lower.shape[1]), generator=gen) * 2 - 1).to(
        lo.dtype
    )
    step = (hi - lo).unsqueeze(1) / 8
    for _ in range(steps):
        x.requires_grad_(True)
        y = f(x)
        gap = torch.where(sign > 0, y - upper.unsqueeze(1), lower.unsqueeze(1) - y)
        (g,) = torch.autograd.grad(gap.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + step * g.sign(), lo.unsqueeze(1)), hi.unsqueeze(1))
    return x.detach()


def rows_fn(fn) -> Callable[[Tensor], Tensor]:
    """(B, n, D) -> (B, n, out) from a function of (N, D) rows."""
    return lambda p: fn(p.reshape(-1, p.shape[-1])).reshape(p.shape[0], p.shape[1], -1)


def seconds_per_1000(case: Case, method: str, states: int) -> float:
    """CPU time of one ``compute_bounds`` call on ``states`` states (the case's, repeated),
    per 1,000 states."""
    k = math.ceil(states / case.lo.shape[0])
    lo, hi = case.lo.repeat(k, 1)[:states], case.hi.repeat(k, 1)[:states]
    t0 = time.process_time()
    with torch.no_grad():
        compute_bounds(case.model, (lo, hi), method=method)
    return (time.process_time() - t0) * 1000 / states


def measure(case: Case, points: int, steps: int, starts: int, timing: int, gen) -> dict:
    """Widths, violations and time per 1,000 states of every method on one case."""
    f = rows_fn(case.fn)
    B = case.lo.shape[0]
    with torch.no_grad():
        pts = sample_box(case.lo, case.hi, max(points // B, 2), gen)
        y = torch.cat([f(p) for p in pts.split(1024, 1)], 1)
    row = {"network": case.name, "eps": case.eps, "states": B, "samples": y.shape[0] * y.shape[1]}
    row["pgd_steps"] = steps * starts * B
    for method in METHODS:
        with torch.no_grad():
            lo, hi = compute_bounds(case.model, (case.lo, case.hi), method=method)
        slow = method == "crown" and "reference" in case.name and case.name.startswith("set")
        seconds = seconds_per_1000(case, method, B if slow else timing)
        adv = pgd_escape(f, case.lo, case.hi, lo, hi, steps, starts, gen)
        with torch.no_grad():
            yy = torch.cat([y, f(adv)], 1)
        tol = 1e-5 * (1 + torch.maximum(lo.abs(), hi.abs()))
        bad = (yy < (lo - tol).unsqueeze(1)) | (yy > (hi + tol).unsqueeze(1))
        row[method] = {
            "width": float((hi - lo).mean()),
            "violations": int(bad.sum()),
            "seconds_per_1000": seconds,
        }
    ibp = row["ibp"]["width"]
    row["crown_over_ibp"] = row["crown"]["width"] / ibp if ibp > 0 else math.nan
    return row


def finite(v):
    """JSON-safe: non-finite floats (an IBP bound that overflowed) as strings."""
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def table(rows: list[dict]) -> str:
    head = (
        f"{'network':28s} {'eps':>7s} {'IBP':>9s} {'CROWN':>9s} {'CROWN-IBP':>9s} "
        f"{'C/I':>7s} {'samples':>8s} {'PGD':>6s} {'viol':>4s} {'s/1k IBP':>9s} "
        f"{'s/1k CROWN':>10s} {'s/1k C-IBP':>10s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        viol = sum(r[m]["violations"] for m in METHODS)
        lines.append(
            f"{r['network']:28s} {r['eps']:7.0e} {r['ibp']['width']:9.3g} "
            f"{r['crown']['width']:9.3g} {r['crown-ibp']['width']:9.3g} "
            f"{r['crown_over_ibp']:7.2g} {r['samples']:8d} {r['pgd_steps']:6d} {viol:4d} "
            f"{r['ibp']['seconds_per_1000']:9.3g} {r['crown']['seconds_per_1000']:10.3g} "
            f"{r['crown-ibp']['seconds_per_1000']:10.3g}"
        )
    return "\n".join(lines)


def cases(quick: bool, gen: torch.Generator) -> list[Case]:
    states = 2 if quick else 4
    out = []
    for kind in ("set", "transformer", "mlp"):
        out += limb_cases(kind, "small", states, gen)
    out += offline_cases(states, reference=False, gen=gen)
    if quick:
        return out
    for kind in ("set", "transformer", "mlp"):
        out += limb_cases(kind, "reference", 1, gen)
    return out + offline_cases(states, reference=True, gen=gen) + sb3_cases(states, gen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small networks, few points (a test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    points, steps, starts, timing = (1_000, 3, 4, 4) if args.quick else (10_000, 10, 16, 32)
    rows = [measure(c, points, steps, starts, timing, gen) for c in cases(args.quick, gen)]
    print(table(rows))
    name = "certify_networks_quick.json" if args.quick else "certify_networks.json"
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "seed": args.seed}
    write_json(out / name, {**meta, "rows": [finite(r) for r in rows]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
