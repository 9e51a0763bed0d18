"""Certificates of saved runs: what ``saferl certify RUN_DIR`` and the experiments compute.

A run folder holds the toolkit's checkpoint (``model.safetensors`` + ``config.json``, nothing is
unpickled). :func:`load_run` recognises

* ``saferl train-online`` runs (kind ``td3_actor``: a SET, transformer or MLP actor of TD3, SAC
  or PPO, flat observations of the suite's padded layout): the deterministic actor, bounded by
  :func:`certify.action_bounds`;
* ``saferl train-offline fisor`` runs: FISOR's diffusion policy with its sampler's noise fixed,
  bounded by :func:`certify.diffusion.certify_diffusion_policy` (the unrolled chain of every
  candidate, then the argmin of ``Q_h^target``), and its feasibility certificate
  (``Q_h^target ≤ 0`` for the chosen action at every observation of the ball);
* ``saferl train-offline bc_all/bc_safe`` runs: the BC actor (MLP + tanh).

:func:`certify_states` certifies a batch of states in chunks (a progress bar on request) and
returns the summary: certified action deviation (mean and max), the fraction of states whose
deviation is at most δ and, for FISOR, the fraction certified feasible.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import certify
from saferl.common.checkpoint import CONFIG, WEIGHTS
from saferl.common.runtime import resolve_device

KINDS = {"td3_actor": "online", "fisor": "fisor", "bc": "bc"}
"""Checkpoint kinds :func:`load_run` certifies, and what they are."""


@dataclass
class Run:
    """A loaded run: ``kind`` (``online``, ``fisor`` or ``bc``), its policy label, observation
    width, the deterministic ``actor`` (online, bc) or the FISOR ``agent``, and its saved
    config."""

    folder: Path
    kind: str
    label: str
    obs_dim: int
    actor: nn.Module | None = None
    agent: Any = None
    saved: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        module = self.actor if self.actor is not None else self.agent.nets
        return next(module.parameters()).device


def run_kind(folder: str | Path) -> str:
    """The checkpoint kind saved in ``folder`` (FileNotFoundError / ValueError naming the
    problem: no folder, no checkpoint, a kind that cannot be certified)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {str(folder)!r} does not exist")
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{str(folder)!r} is not a saved run: it lacks {name} "
                                    "(saferl train-online / train-offline save runs)")  # fmt: skip
    try:
        kind = json.loads((folder / CONFIG).read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{str(folder / CONFIG)!r} is not a JSON object") from exc
    if kind not in KINDS:
        raise ValueError(f"{str(folder)!r} holds a {kind!r} run; certify takes runs of kind "
                         f"{sorted(KINDS)} (train-online; train-offline fisor, bc_all, "
                         "bc_safe)")  # fmt: skip
    return kind


def load_run(folder: str | Path, device: str | torch.device | None = None) -> Run:
    """Load a run saved by ``saferl train-online`` or ``train-offline`` (see :data:`KINDS`)."""
    kind = run_kind(folder)
    folder = Path(folder)
    saved = json.loads((folder / CONFIG).read_text())
    dev = resolve_device(device)
    if kind == "td3_actor":
        from saferl.online.td3 import load_actor

        actor = load_actor(str(folder), device=str(dev))
        return Run(folder, "online", saved["td3"]["policy"], int(saved["obs_dim"]), actor=actor,
                   saved=saved)  # fmt: skip
    if kind == "fisor":
        from saferl.offline.fisor import FISOR

        agent = FISOR.load(folder, device=dev)
        return Run(folder, "fisor", "fisor", agent.obs_dim, agent=agent, saved=saved)
    from saferl.offline.bc import BC

    bc = BC.load(folder, device=dev)
    actor = nn.Sequential(bc.actor.net, nn.Tanh()).eval()  # MLP(squash=True) as a chain
    return Run(folder, "bc", "bc", bc.obs_dim, actor=actor, saved=saved)


def recorded_dataset(run: Run) -> str | None:
    """The dataset an offline run was trained on (its ``metrics.json``), if it still exists."""
    path = run.folder / "metrics.json"
    if run.kind == "online" or not path.is_file():
        return None
    try:
        dataset = json.loads(path.read_text()).get("dataset")
    except (json.JSONDecodeError, AttributeError):
        return None
    return dataset if isinstance(dataset, str) and Path(dataset).is_file() else None


def dataset_states(path: str | Path, n: int, seed: int, obs_dim: int) -> np.ndarray:
    """``n`` observations drawn without replacement (all if fewer) from a DSRL file."""
    from saferl.data import load_dataset

    data, _ = load_dataset(path)
    obs = data["observations"]
    if obs.shape[1] != obs_dim:
        raise ValueError(f"dataset {str(path)!r} has observations of width {obs.shape[1]}, "
                         f"the run's policy takes {obs_dim}")  # fmt: skip
    idx = np.random.default_rng(seed).choice(len(obs), size=min(n, len(obs)), replace=False)
    return obs[np.sort(idx)]


def rollout_states(run: Run, n: int, seed: int, max_steps: int = 200) -> np.ndarray:
    """``n`` observations of fresh episodes of the run's env(s) under its own policy
    (episodes of at most ``max_steps`` steps; online runs: spread over the training agents)."""
    from saferl.data import rollout_transitions

    if run.kind == "online":
        import envs
        from saferl.online.td3 import TD3Config, suite_agents, suite_max_limbs, train_agents_of

        config = TD3Config(**run.saved["td3"])
        agents = train_agents_of(config)
        heldout = [a for a in suite_agents(config.suite, "heldout") if a not in agents]
        max_limbs = config.max_limbs or suite_max_limbs(agents + heldout)
        env_fns = [(lambda a=a: envs.make(envs.env_id(a), max_limbs=max_limbs,
                                         cost_type=config.cost_type)) for a in agents]  # fmt: skip
        policy = _torch_policy(run.actor, run.device)
    else:
        dataset = recorded_dataset(run)
        if dataset is None:
            raise FileNotFoundError(f"{str(run.folder)!r}: the dataset it was trained on is "
                                    "not recorded or gone, so its env is unknown; pass "
                                    "--dataset")  # fmt: skip
        from saferl.data import load_dataset

        _, meta = load_dataset(dataset)
        env_fns = [meta.make_env]
        policy = run.agent.act if run.kind == "fisor" else _torch_policy(run.actor, run.device)
    per = [n // len(env_fns) + (k < n % len(env_fns)) for k in range(len(env_fns))]
    parts = []
    for env_fn, count in zip(env_fns, per, strict=True):
        if count == 0:
            continue
        runs = rollout_transitions(policy, env_fn, count, seed, max_steps=max_steps,
                                   batch=min(8, count))  # fmt: skip
        obs = runs.data["observations"]
        pick = np.random.default_rng(seed).choice(len(obs), size=count, replace=False)
        parts.append(obs[np.sort(pick)])
    return np.concatenate(parts).astype(np.float32)


def _torch_policy(actor: nn.Module, device: torch.device):
    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        return actor(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    return policy


def certify_states(
    run: Run,
    obs: np.ndarray | torch.Tensor,
    eps: float,
    method: str = "crown",
    delta: float = 0.1,
    batch: int = 64,
    seed: int = 0,
    progress: bool = False,
    stepwise: bool = False,
    check_samples: int = 0,
) -> dict[str, Any]:
    """Certify ``run``'s policy on ``obs`` (n, obs_dim) at radius ``eps``, ``batch`` states per
    bound computation (FISOR: ``batch // N`` states, each ``N`` candidate rows): the summary dict
    (deviation mean/max, fraction within ``delta``, seconds per 1,000 states; FISOR: fractions
    certified feasible, of the chosen action and of the whole certified set, the nominal
    feasible fraction and the mean number of surviving candidates). FISOR's sampler noise is
    drawn as its sampler draws it, from a generator seeded with ``seed``; ``stepwise`` bounds
    its chain one reverse step at a time (:func:`certify.diffusion.candidate_bounds`: looser,
    several times faster with CROWN). ``check_samples`` > 0: that many observations per state
    (corners and uniform points of the ball) are run through the policy (FISOR: with the same
    noise) and the actions outside the bounds counted (``sampled_violations``: 0 for sound
    bounds; the time is not counted in ``seconds``)."""
    x = _check_inputs(run, obs, eps, method, delta, batch)
    parts: dict[str, list[torch.Tensor]] = {}
    start = time.perf_counter()
    if run.kind == "fisor":
        from saferl.offline.fisor_certify import diffusion_chain, selection_critic

        chain, critic = diffusion_chain(run.agent), selection_critic(run.agent)
        gen = torch.Generator(device=run.device).manual_seed(seed)
        batch = max(1, batch // run.agent.config.num_candidates)  # ~batch candidate rows
    checked = 0.0
    bar = tqdm(total=x.shape[0], disable=not progress, unit="state",
               desc=f"certify {method} eps={eps:g}")  # fmt: skip
    for chunk in torch.split(x, batch):
        if run.kind == "fisor":
            rows, bounds, policy = _fisor_chunk(chain, critic, chunk, eps, method, gen, stepwise)
        else:
            rows, bounds, policy = _actor_chunk(run.actor, chunk, eps, method)
        if check_samples:
            start_check = time.perf_counter()
            rows["violations"] = sampled_violations(policy, chunk, eps, bounds, check_samples,
                                                    seed)  # fmt: skip
            checked += time.perf_counter() - start_check
        for key, value in rows.items():
            parts.setdefault(key, []).append(value.detach().float().cpu())
        bar.update(chunk.shape[0])
    bar.close()
    seconds = time.perf_counter() - start - checked
    res = {k: torch.cat(v) for k, v in parts.items()}
    dev = res["deviation"]
    summary = {
        "run": str(run.folder),
        "kind": run.kind,
        "policy": run.label,
        "method": method,
        "eps": eps,
        "delta": delta,
        "states": int(x.shape[0]),
        "deviation_mean": float(dev.mean()),
        "deviation_max": float(dev.max()),
        "fraction_within_delta": float((dev <= delta).float().mean()),
        "seconds": seconds,
        "seconds_per_1000_states": 1000 * seconds / x.shape[0],
    }
    if check_samples:
        summary["samples_checked"] = int(x.shape[0]) * check_samples
        summary["sampled_violations"] = int(res["violations"].sum())
    if run.kind == "fisor":
        summary.update({
            "candidates": run.agent.config.num_candidates,
            "noise_seed": seed,
            "stepwise": stepwise,
            "fraction_feasible": float(res["feasible"].mean()),
            "fraction_feasible_set": float(res["feasible_set"].mean()),
            "fraction_feasible_nominal": float(res["feasible_nominal"].mean()),
            "surviving_candidates_mean": float(res["surviving"].mean()),
        })  # fmt: skip
    return summary


FISOR_CROWN_SECONDS = {True: 0.5, False: 2.5}
"""CPU seconds per state of FISOR's CROWN certificate on one thread (``--stepwise``: True;
the whole chain: False), measured for the demo networks (noise network width 128, 2 blocks;
16 candidates, 5 reverse steps) on a 2-core machine: 0.4-0.9 and 2.3-5 s, idle to loaded."""


def fisor_crown_seconds(run: Run, states: int, stepwise: bool) -> float:
    """A rough CPU time (one thread) of certifying ``states`` states of a FISOR run with CROWN:
    :data:`FISOR_CROWN_SECONDS` scaled by candidates x reverse steps x width² x blocks (x steps
    again for the whole chain, whose backward passes run through every earlier step)."""
    cfg = run.agent.config
    scale = (cfg.num_candidates / 16) * (cfg.diffusion_steps / 5) * (cfg.actor_width / 128) ** 2
    scale *= cfg.actor_blocks / 2
    if not stepwise:
        scale *= cfg.diffusion_steps / 5
    return states * FISOR_CROWN_SECONDS[stepwise] * scale


def _check_inputs(run: Run, obs, eps: float, method: str, delta: float, batch: int):
    """The states as a tensor on the run's device; ValueError naming a bad argument."""
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
    if method not in certify.METHODS:
        raise ValueError(f"method must be one of {certify.METHODS}, got {method!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    x = obs if isinstance(obs, torch.Tensor) else np.asarray(obs)
    x = torch.as_tensor(x, dtype=torch.float32, device=run.device)
    if x.dim() != 2 or x.shape[1] != run.obs_dim or x.shape[0] == 0:
        raise ValueError(f"states must have shape (n >= 1, {run.obs_dim}), got {tuple(x.shape)}")
    return x


def _fisor_chunk(chain, critic, obs, eps, method, gen, stepwise):
    """FISOR's certificate on a chunk: (per-state figures, action bounds, the policy with this
    chunk's noise)."""
    from saferl.offline.fisor_certify import sampler_noise

    noise = sampler_noise(chain, obs.shape[0], gen, obs.device)
    cert = certify.certify_diffusion_policy(chain, critic, obs, eps, noise, method,
                                            steps=stepwise)  # fmt: skip
    rows = {"deviation": cert.deviation, "feasible": cert.certified,
            "feasible_set": cert.certified_set, "feasible_nominal": cert.score <= 0,
            "surviving": cert.surviving.sum(1).float()}  # fmt: skip

    def policy(o: torch.Tensor) -> torch.Tensor:
        return certify.diffusion.select_action(chain, critic, o, noise)[0]

    return rows, (cert.action_lower, cert.action_upper), policy


def _actor_chunk(actor, obs, eps, method):
    """A deterministic actor's bounds on a chunk: (deviation, bounds, the actor)."""
    lo, hi = certify.action_bounds(actor, obs, eps, method)
    with torch.no_grad():
        nominal = actor(obs)
    return {"deviation": torch.maximum(hi - nominal, nominal - lo).amax(-1)}, (lo, hi), actor


@torch.no_grad()
def sampled_violations(policy, obs: torch.Tensor, eps: float, bounds, k: int,
                       seed: int) -> torch.Tensor:  # fmt: skip
    """(B,) number of ``k`` observations per state (half random corners of the ball, half
    uniform) whose action ``policy(obs')`` leaves ``bounds`` (beyond 1e-5 of rounding)."""
    g = torch.Generator(device=obs.device).manual_seed(seed)
    lo, hi = bounds
    count = torch.zeros(obs.shape[0], device=obs.device)
    for i in range(k):
        u = torch.rand(obs.shape, generator=g, device=obs.device) * 2 - 1
        d = eps * (u.sign() if i % 2 == 0 else u)
        a = policy(obs + d)
        count += ((a < lo - 1e-5) | (a > hi + 1e-5)).any(-1).float()
    return count


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a few readable lines (what ``saferl certify`` prints)."""
    s = summary
    lines = [
        f"{s['policy']} ({s['kind']}) run {s['run']}: {s['states']} state"
        f"{'' if s['states'] == 1 else 's'}, l_inf eps "
        f"{s['eps']:g}, {s['method']}",
        f"  certified action deviation: mean {s['deviation_mean']:.4g}, max "
        f"{s['deviation_max']:.4g}; {100 * s['fraction_within_delta']:.1f}% of states within "
        f"delta {s['delta']:g}",
    ]
    if s["kind"] == "fisor":
        lines.append(
            f"  FISOR feasibility (Q_h <= 0 under every perturbation; {s['candidates']} "
            f"candidates, noise seed {s['noise_seed']}, chain bounded "
            f"{'step by step' if s['stepwise'] else 'whole'}): chosen action "
            f"{100 * s['fraction_feasible']:.1f}%, whole certified action set "
            f"{100 * s['fraction_feasible_set']:.1f}% (nominal: "
            f"{100 * s['fraction_feasible_nominal']:.1f}%); "
            f"{s['surviving_candidates_mean']:.2f} candidates may be chosen on average"
        )
    if "samples_checked" in s:
        lines.append(f"  soundness check: {s['sampled_violations']} of {s['samples_checked']} "
                     "sampled perturbed observations gave an action outside the "
                     "bounds")  # fmt: skip
    lines.append(f"  {s['seconds']:.2f} s ({s['seconds_per_1000_states']:.2f} s per 1,000 states)")
    return lines
