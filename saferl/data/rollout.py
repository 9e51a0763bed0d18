"""The one rollout of the toolkit: episodes side by side, DSRL arrays out.

Evaluation (the DSRL protocol), dataset collection, the demo, TD3's evaluation and the safety
labels of the EP and COLEP tasks all reduce over :func:`rollout`'s output, so terminated vs
truncated, cost and seeding are handled in one place:

* episode ``i`` resets with seed ``seed + i``; the policy is called once per step on the batch
  of episodes still running, ``policy(obs (B, obs_dim)) -> actions (B, act_dim)``;
* Gaussian action noise (std ``noise_std``, generator seeded with ``seed``) is added, then the
  action is clipped to the action space;
* ``terminals`` = the env's ``terminated``; ``timeouts`` = truncated (by the env's time limit or
  by ``max_steps``) and not terminated; the cost is ``info["cost"]`` (KeyError if absent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from saferl.data.dsrl import REQUIRED_KEYS

Policy = Callable[..., np.ndarray]
"""A batched policy: observations ``(B, obs_dim)`` -> actions ``(B, act_dim)``; with
``episode_index=True`` it is also given the episodes' indices ``(B,)`` (behaviour policies whose
parameters are drawn per episode)."""


@dataclass
class Rollouts:
    """Episodes of one :func:`rollout` call.

    ``data``: the DSRL arrays (float32) of every episode, episode after episode (empty when not
    recorded); ``returns``, ``costs``, ``lengths``: undiscounted per-episode sums, shape
    (episodes,); ``terminated``: whether each episode ended by failure; ``last_info``: each
    episode's final ``info`` dict; ``info_sums``: per-episode sums of the ``info`` entries named
    in :func:`rollout`'s ``sum_info``, shape (episodes,) each.
    """

    returns: np.ndarray
    costs: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    last_info: list[dict[str, Any]]
    data: dict[str, np.ndarray] = field(default_factory=dict)
    info_sums: dict[str, np.ndarray] = field(default_factory=dict)

    def info_means(self, key: str) -> np.ndarray:
        """Per-episode mean over steps of ``info[key]`` (it must be in ``sum_info``)."""
        if key not in self.info_sums:
            raise KeyError(f"{key!r} was not summed; pass sum_info=({key!r},) to rollout")
        return self.info_sums[key] / np.maximum(self.lengths, 1)

    def episodes(self) -> list[dict[str, np.ndarray]]:
        """The recorded DSRL arrays split per episode."""
        if not self.data:
            raise ValueError("this rollout was run with record=False; no arrays were kept")
        ends = np.cumsum(self.lengths)
        starts = ends - self.lengths
        bounds = zip(starts, ends, strict=True)
        return [{k: v[s:e] for k, v in self.data.items()} for s, e in bounds]

    def head(self, episodes: int) -> Rollouts:
        """The first ``episodes`` episodes."""
        steps = int(self.lengths[:episodes].sum())
        data = {k: v[:steps] for k, v in self.data.items()}
        sums = {k: v[:episodes] for k, v in self.info_sums.items()}
        return Rollouts(self.returns[:episodes], self.costs[:episodes],
                        self.lengths[:episodes], self.terminated[:episodes],
                        self.last_info[:episodes], data, sums)  # fmt: skip

    def episode_ids(self) -> np.ndarray:
        """The episode index of every recorded step, shape (N,)."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)


def rollout(
    policy: Policy,
    env_fn: Callable[[], gym.Env],
    episodes: int,
    seed: int = 0,
    max_steps: int | None = None,
    noise_std: float = 0.0,
    record: bool = True,
    episode_index: bool = False,
    first_episode: int = 0,
    sum_info: tuple[str, ...] = (),
) -> Rollouts:
    """Run ``episodes`` episodes side by side (see the module docstring).

    Episodes are numbered from ``first_episode`` (their reset seed is ``seed`` plus that number);
    ``episode_index`` passes those numbers to the policy as its second argument. ``sum_info``
    names ``info`` entries summed per episode into ``Rollouts.info_sums`` (KeyError at the first
    step that lacks one).
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps!r}")
    if not np.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
    pool = [env_fn() for _ in range(episodes)]
    try:
        if episode_index:
            act = policy
        else:

            def act(obs, _):
                return policy(obs)

        return _run(act, pool, seed, first_episode, max_steps, noise_std, record,
                    tuple(sum_info))  # fmt: skip
    finally:
        for env in pool:
            env.close()


def _run(policy, pool, seed, first, max_steps, noise_std, record, sum_info=()) -> Rollouts:
    n = len(pool)
    rng = np.random.default_rng(seed + first)
    space = pool[0].action_space
    obs = np.stack([env.reset(seed=seed + first + i)[0] for i, env in enumerate(pool)])
    obs = obs.astype(np.float32)
    returns, costs = np.zeros(n), np.zeros(n)
    lengths, terminated = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    last_info: list[dict[str, Any]] = [{} for _ in range(n)]
    sums = {key: np.zeros(n) for key in sum_info}
    steps: list[list[tuple]] = [[] for _ in range(n)]
    alive = np.ones(n, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = np.asarray(policy(obs[idx], first + idx), dtype=np.float64)
        if noise_std > 0:
            actions = actions + rng.normal(0.0, noise_std, size=actions.shape)
        actions = np.clip(actions, space.low, space.high)
        for row, i in enumerate(idx):
            nxt, reward, term, trunc, info = pool[i].step(actions[row])
            if "cost" not in info:
                raise KeyError("the env's step info lacks 'cost'; build it with envs.make or "
                               "DatasetMetadata.make_env")  # fmt: skip
            lengths[i] += 1
            trunc = bool(trunc) or (max_steps is not None and lengths[i] >= max_steps)
            returns[i] += reward
            costs[i] += info["cost"]
            for key, total in sums.items():
                if key not in info:
                    raise KeyError(f"the env's step info lacks {key!r} (sum_info); it has "
                                   f"{sorted(info)}")  # fmt: skip
                total[i] += info[key]
            if record:
                steps[i].append((obs[i].copy(), nxt, actions[row], reward, info["cost"],
                                 bool(term), bool(trunc and not term)))  # fmt: skip
            obs[i] = nxt
            if term or trunc:
                alive[i], terminated[i], last_info[i] = False, bool(term), info
    data = _arrays([s for episode in steps for s in episode]) if record else {}
    return Rollouts(returns, costs, lengths, terminated, last_info, data, sums)


def rollout_transitions(
    policy: Policy,
    env_fn: Callable[[], gym.Env],
    transitions: int,
    seed: int = 0,
    max_steps: int | None = None,
    batch: int = 8,
    episode_index: bool = False,
) -> Rollouts:
    """Whole episodes until at least ``transitions`` steps are recorded: :func:`rollout` on
    batches of ``batch`` episodes (numbered on across batches), cut after the first episode that
    reaches the count."""
    if not isinstance(transitions, int) or transitions < 1:
        raise ValueError(f"transitions must be a positive int, got {transitions!r}")
    parts: list[Rollouts] = []
    total = done = 0
    while total < transitions:
        part = rollout(policy, env_fn, batch, seed, max_steps, episode_index=episode_index,
                       first_episode=done)  # fmt: skip
        parts.append(part)
        total, done = total + int(part.lengths.sum()), done + batch
    out = concatenate_rollouts(parts)
    keep = int(np.searchsorted(np.cumsum(out.lengths), transitions) + 1)
    return out.head(keep)


def concatenate_rollouts(parts: list[Rollouts]) -> Rollouts:
    """The episodes of several rollouts, in order."""
    data = {}
    if all(p.data for p in parts):
        data = {k: np.concatenate([p.data[k] for p in parts]) for k in REQUIRED_KEYS}
    keys = set.intersection(*(set(p.info_sums) for p in parts)) if parts else set()
    sums = {k: np.concatenate([p.info_sums[k] for p in parts]) for k in sorted(keys)}
    return Rollouts(
        np.concatenate([p.returns for p in parts]), np.concatenate([p.costs for p in parts]),
        np.concatenate([p.lengths for p in parts]), np.concatenate([p.terminated for p in parts]),
        [i for p in parts for i in p.last_info], data, sums,
    )  # fmt: skip


def _arrays(steps: list[tuple]) -> dict[str, np.ndarray]:
    columns = list(zip(*steps, strict=True))
    return {k: np.asarray(v, dtype=np.float32) for k, v in zip(REQUIRED_KEYS, columns, strict=True)}


def unsafe_within(costs: np.ndarray, episode_ids: np.ndarray, k: int) -> np.ndarray:
    """Label 1 where a cost fires at step t or any of the next ``k − 1`` steps of the same
    episode, else 0; int64 of shape (N,). The safety label of the EP and COLEP tasks."""
    costs, episode_ids = np.asarray(costs), np.asarray(episode_ids)
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"horizon k must be a positive int, got {k!r}")
    if costs.shape != episode_ids.shape or costs.ndim != 1:
        raise ValueError(f"costs and episode_ids must be vectors of one length, got "
                         f"{costs.shape} and {episode_ids.shape}")  # fmt: skip
    n = len(costs)
    labels = np.zeros(n, dtype=np.int64)
    for j in range(min(k, n)):
        fires = (costs[j:] > 0) & (episode_ids[j:] == episode_ids[: n - j])
        labels[: n - j] |= fires.astype(np.int64)
    return labels
