"""Stable-Baselines3 glue: a TD3 policy whose actor and critics are SET / transformer / MLP nets.

``LimbTD3Policy`` keeps SB3's TD3 class chain (Actor, ContinuousCritic, TD3Policy) and only
swaps the networks, so ``TD3("...", policy=LimbTD3Policy, policy_kwargs={"kind": "set"})``
trains one shared policy over a vector env that mixes morphologies (padded flat view, graph
view decoded inside the nets), and SB3's own ``save`` / ``load`` round-trip it.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.td3.policies import Actor, TD3Policy
from torch import Tensor, nn

from saferl.policies.factory import KINDS, build_actor, build_critic, make_config
from saferl.policies.graph import layout_for, split_obs_actions


class ClippedAdam(torch.optim.Adam):
    """Adam that clips the global gradient norm of its parameters before each step
    (3D-SGRL's TD3 clips at 0.1). Pass as ``optimizer_class`` with ``max_grad_norm``."""

    def __init__(self, params: Any, lr: float = 1e-3, max_grad_norm: float = 0.1, **kw: Any):
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        super().__init__(params, lr=lr, **kw)
        self.defaults["max_grad_norm"] = float(max_grad_norm)  # kept by pickle and deepcopy

    @property
    def max_grad_norm(self) -> float:
        return self.defaults["max_grad_norm"]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        return super().step(closure)


class CriticAdapter(nn.Module):
    """Wraps a critic ``(obs, actions) -> Q`` for SB3's ``q_net(cat([obs, actions], 1))``."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, inputs: Tensor) -> Tensor:
        obs, actions = split_obs_actions(inputs, self.critic.layout)
        return self.critic(obs, actions)


class LimbActor(Actor):
    """SB3 TD3 actor whose ``mu`` is a limb-graph policy net (flat obs -> actions)."""

    def __init__(self, *args: Any, kind: str = "set", net_config: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kind, self.net_config = kind, net_config
        self.mu = build_actor(
            kind, self.observation_space, self.action_space, net_config, device="cpu"
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(kind=self.kind, net_config=self.net_config)
        return data


class LimbCritic(ContinuousCritic):
    """SB3 TD3 twin critic whose Q-networks are limb-graph critics."""

    def __init__(self, *args: Any, kind: str = "set", net_config: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kind, self.net_config = kind, net_config
        for idx in range(len(self.q_networks)):
            net = CriticAdapter(
                build_critic(
                    kind, self.observation_space, self.action_space, net_config, device="cpu"
                )
            )
            setattr(self, f"qf{idx}", net)  # replaces the registered MLP
            self.q_networks[idx] = net


class LimbTD3Policy(TD3Policy):
    """TD3 policy with limb-graph actor and critics.

    :param kind: "set", "transformer" or "mlp".
    :param net_config: dict (or config dataclass) of the kind's sizes; None = reference sizes.
    Other arguments as :class:`stable_baselines3.td3.policies.TD3Policy`; the observation space
    must be the padded flat view of ``envs.layout`` (ValueError otherwise).
    """

    def __init__(
        self,
        observation_space: Any,
        action_space: Any,
        lr_schedule: Any,
        kind: str = "set",
        net_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if kind not in KINDS:
            raise KeyError(f"unknown policy kind {kind!r}; expected one of {sorted(KINDS)}")
        layout_for(observation_space, action_space)
        make_config(kind, net_config)  # validate before building
        self.kind, self.net_config = kind, net_config
        kwargs.setdefault("net_arch", [])
        kwargs.setdefault("features_extractor_class", FlattenExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def make_actor(self, features_extractor: Any = None) -> Actor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return LimbActor(**kwargs, kind=self.kind, net_config=self.net_config).to(self.device)

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return LimbCritic(**kwargs, kind=self.kind, net_config=self.net_config).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(kind=self.kind, net_config=self.net_config)
        return data
