"""Stable-Baselines3 glue: TD3, SAC and PPO policies whose nets are SET / transformer / MLP nets.

``LimbTD3Policy`` keeps SB3's TD3 class chain (Actor, ContinuousCritic, TD3Policy) and only
swaps the networks, so ``TD3("...", policy=LimbTD3Policy, policy_kwargs={"kind": "set"})``
trains one shared policy over a vector env that mixes morphologies (padded flat view, graph
view decoded inside the nets), and SB3's own ``save`` / ``load`` round-trip it.
``LimbSACPolicy`` (SAC's Actor / SACPolicy chain, the same twin critics as TD3) and
``LimbActorCriticPolicy`` (PPO's ActorCriticPolicy, with a limb-graph state value V(s)) do the
same for SAC and PPO. Their Gaussians take the mean from the policy net (SAC: its pre-tanh
output, squashed by tanh; PPO: its action tanh(pre-activation)) and a learned log-std per
action dimension that does not depend on the state, so SET's exact rotation invariance carries
over to the whole action distribution. Both put no noise on the torso and padded action rows
(the env ignores them) and count only the actuated hinges in log-probabilities and entropies
(:class:`MaskedDiagGaussian`). The deterministic action of every policy is its policy net's
output: ``deterministic_net`` returns it.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.distributions import (
    DiagGaussianDistribution,
    SquashedDiagGaussianDistribution,
    TanhBijector,
)
from stable_baselines3.common.policies import ActorCriticPolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.td3.policies import Actor, TD3Policy
from torch import Tensor, nn

from envs.layout import ACTIONS_PER_LIMB, ObsLayout
from saferl.policies.factory import KINDS, build_actor, build_critic, make_config
from saferl.policies.graph import graph_view, layout_for, split_obs_actions
from saferl.policies.value import build_value


class ClippedAdam(torch.optim.Adam):
    """Adam that clips the global gradient norm of its parameters before each step
    (3D-SGRL's TD3 clips at 0.1). Pass as ``optimizer_class`` with ``max_grad_norm``.

    Uses torch's multi-tensor (``foreach``) Adam on every device unless ``foreach`` is given:
    the same update as the per-tensor loop torch picks on CPUs, in a handful of kernels instead
    of about six per parameter tensor (a SET critic has 84)."""

    def __init__(self, params: Any, lr: float = 1e-3, max_grad_norm: float = 0.1, **kw: Any):
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        kw.setdefault("foreach", True)
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

    def certify_structure(self, lo: Tensor, hi: Tensor) -> list:
        """certify's structure protocol: the critic's fixed-structure forms on the same
        concatenated input (:mod:`saferl.policies.bounded`)."""
        return self.critic.certify_structure(lo, hi)


class LimbActor(Actor):
    """SB3 TD3 actor whose ``mu`` is a limb-graph policy net (flat obs -> actions)."""

    def __init__(self, *args: Any, kind: str = "set", net_config: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kind, self.net_config = kind, net_config
        self.mu = build_actor(
            kind, self.observation_space, self.action_space, net_config, device="cpu"
        )

    def forward(self, obs: Tensor, decoded: Any = None) -> Tensor:
        """SB3's actor forward; ``decoded``: :meth:`LimbTD3Policy.decode` of ``obs``."""
        features = self.extract_features(obs, self.features_extractor)
        return self.mu(features) if decoded is None else self.mu(features, decoded=decoded)

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

    def forward(self, obs: Tensor, actions: Tensor, decoded: Any = None) -> tuple[Tensor, ...]:
        """SB3's twin Q-values; ``decoded``: :meth:`LimbTD3Policy.decode` of ``obs``, shared
        by the critics (the same values, without decoding ``obs`` once per critic)."""
        if decoded is None:
            return super().forward(obs, actions)
        with torch.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        actions = self._limb_actions(actions)
        return tuple(q.critic(features, actions, decoded=decoded) for q in self.q_networks)

    def q1_forward(self, obs: Tensor, actions: Tensor, decoded: Any = None) -> Tensor:
        """SB3's first Q-value (the actor's loss); ``decoded`` as in :meth:`forward`."""
        if decoded is None:
            return super().q1_forward(obs, actions)
        with torch.no_grad():
            features = self.extract_features(obs, self.features_extractor)
        return self.q_networks[0].critic(features, self._limb_actions(actions), decoded=decoded)

    def _limb_actions(self, actions: Tensor) -> Tensor:
        """SB3's flat actions (B, L*3) -> (B, L, 3), as :class:`CriticAdapter` splits them."""
        return actions.reshape(actions.shape[0], -1, ACTIONS_PER_LIMB)


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

    def decode(self, obs: Tensor) -> Any:
        """A batch of observations decoded once for the actor, the critics and their targets
        (their ``decoded`` argument), or None for a kind whose nets do not decode (MLP)."""
        decode = getattr(self.actor.mu, "decode", None)
        if decode is None:
            return None
        return decode(self.actor.extract_features(obs, self.actor.features_extractor))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(kind=self.kind, net_config=self.net_config)
        return data


def _check_kind(kind: str, net_config: Any, observation_space: Any, action_space: Any) -> None:
    if kind not in KINDS:
        raise KeyError(f"unknown policy kind {kind!r}; expected one of {sorted(KINDS)}")
    layout_for(observation_space, action_space)
    make_config(kind, net_config)  # validate before building


def action_mask(obs: Tensor, layout: ObsLayout) -> Tensor:
    """(B, L*3) float: 1 on the hinges the env actuates (real, non-torso limbs), 0 on the torso
    and padded rows, for flat observations ``obs`` (B, flat_dim). Invariant (scalars only)."""
    act_mask = graph_view(obs, layout)["act_mask"]
    return act_mask.repeat_interleave(ACTIONS_PER_LIMB, dim=1)


class MaskedDiagGaussian(DiagGaussianDistribution):
    """Diagonal Gaussian over the actuated action dimensions only.

    ``proba_distribution(mean (B, A), log_std (A,) or (B, A), mask (B, A) in {0, 1})``: a
    masked dimension is its mean exactly (its noise is multiplied by 0) and adds nothing to the
    log-probability or the entropy. No mask = every dimension (SB3's DiagGaussian).
    """

    mask: Tensor

    def proba_distribution(  # type: ignore[override]
        self, mean_actions: Tensor, log_std: Tensor, mask: Tensor | None = None
    ) -> MaskedDiagGaussian:
        super().proba_distribution(mean_actions, log_std)
        self.mask = torch.ones_like(mean_actions) if mask is None else mask.to(mean_actions)
        return self

    def _gaussian_sample(self) -> Tensor:
        mean, std = self.distribution.mean, self.distribution.stddev
        return mean + self.mask * std * torch.randn_like(mean)  # reparametrised

    def log_prob(self, actions: Tensor) -> Tensor:
        return (self.distribution.log_prob(actions) * self.mask).sum(dim=1)

    def entropy(self) -> Tensor | None:
        return (self.distribution.entropy() * self.mask).sum(dim=1)

    def sample(self) -> Tensor:
        return self._gaussian_sample()

    def actions_from_params(  # type: ignore[override]
        self,
        mean_actions: Tensor,
        log_std: Tensor,
        deterministic: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor:
        self.proba_distribution(mean_actions, log_std, mask)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(  # type: ignore[override]
        self, mean_actions: Tensor, log_std: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        actions = self.actions_from_params(mean_actions, log_std, mask=mask)
        return actions, self.log_prob(actions)


class MaskedSquashedDiagGaussian(MaskedDiagGaussian, SquashedDiagGaussianDistribution):
    """tanh of a :class:`MaskedDiagGaussian` (SAC's squashed Gaussian, Haarnoja et al. 2018,
    Appendix C): log pi(a) = sum over actuated dims of log N(u) - log(1 - tanh(u)^2)."""

    def log_prob(self, actions: Tensor, gaussian_actions: Tensor | None = None) -> Tensor:
        if gaussian_actions is None:
            gaussian_actions = TanhBijector.inverse(actions)
        per_dim = self.distribution.log_prob(gaussian_actions)
        per_dim = per_dim - torch.log(1 - actions**2 + self.epsilon)  # tanh's Jacobian
        return (per_dim * self.mask).sum(dim=1)

    def entropy(self) -> Tensor | None:
        return None  # no closed form (SAC estimates it by -log_prob)

    def sample(self) -> Tensor:
        self.gaussian_actions = self._gaussian_sample()
        return torch.tanh(self.gaussian_actions)

    def log_prob_from_params(  # type: ignore[override]
        self, mean_actions: Tensor, log_std: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        actions = self.actions_from_params(mean_actions, log_std, mask=mask)
        return actions, self.log_prob(actions, self.gaussian_actions)


class LimbSACActor(SACActor):
    """SB3 SAC actor whose ``mu`` is a limb-graph policy net (flat obs -> actions).

    The squashed Gaussian's mean is ``mu.pre_activation(obs)`` (so the deterministic action
    tanh(mean) is ``mu(obs)``), its log-std a learned vector with one entry per action
    dimension (``log_std_init`` at the start, clamped to SB3's [-20, 2]); torso and padded rows
    get no noise (:class:`MaskedSquashedDiagGaussian`). gSDE is not supported.
    """

    def __init__(self, *args: Any, kind: str = "set", net_config: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.use_sde:
            raise ValueError("gSDE (use_sde=True) is not supported by the limb-graph SAC actor")
        self.kind, self.net_config = kind, net_config
        self.mu = build_actor(
            kind, self.observation_space, self.action_space, net_config, device="cpu"
        )
        action_dim = self.mu.layout.action_dim
        del self.log_std  # SB3's state-dependent head
        self.log_std = nn.Parameter(torch.full((action_dim,), float(self.log_std_init)))
        self.action_dist = MaskedSquashedDiagGaussian(action_dim)

    def get_action_dist_params(self, obs: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        features = self.extract_features(obs, self.features_extractor)
        mean = self.mu.pre_activation(features)
        log_std = torch.clamp(self.log_std, LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)
        return mean, log_std, {"mask": action_mask(features, self.mu.layout)}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(kind=self.kind, net_config=self.net_config)
        return data


class LimbSACPolicy(SACPolicy):
    """SAC policy (Haarnoja et al., ICML 2018) with a :class:`LimbSACActor` and the twin
    limb-graph critics of :class:`LimbTD3Policy`.

    :param kind: "set", "transformer" or "mlp".
    :param net_config: dict (or config dataclass) of the kind's sizes; None = reference sizes.
    :param log_std_init: initial log-std of every action dimension (before tanh).
    Other arguments as :class:`stable_baselines3.sac.policies.SACPolicy` (``use_sde`` must stay
    False); the observation space must be the padded flat view of ``envs.layout``.
    """

    def __init__(
        self,
        observation_space: Any,
        action_space: Any,
        lr_schedule: Any,
        kind: str = "set",
        net_config: Any = None,
        log_std_init: float = 0.0,
        **kwargs: Any,
    ) -> None:
        _check_kind(kind, net_config, observation_space, action_space)
        self.kind, self.net_config = kind, net_config
        kwargs.setdefault("net_arch", [])
        super().__init__(
            observation_space, action_space, lr_schedule, log_std_init=log_std_init, **kwargs
        )

    def make_actor(self, features_extractor: Any = None) -> LimbSACActor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return LimbSACActor(**kwargs, kind=self.kind, net_config=self.net_config).to(self.device)

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return LimbCritic(**kwargs, kind=self.kind, net_config=self.net_config).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(kind=self.kind, net_config=self.net_config)
        return data


class ValueExtractor(nn.Module):
    """PPO's ``mlp_extractor`` for limb-graph nets: the actor's latent is the flat observation
    itself (the policy net decodes the graph), the critic's latent is V(s) (B, 1)."""

    def __init__(self, value: nn.Module, flat_dim: int) -> None:
        super().__init__()
        self.value = value
        self.latent_dim_pi, self.latent_dim_vf = flat_dim, 1

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return features, self.value(features)

    def forward_actor(self, features: Tensor) -> Tensor:
        return features

    def forward_critic(self, features: Tensor) -> Tensor:
        return self.value(features)


class LimbActorCriticPolicy(ActorCriticPolicy):
    """PPO / A2C policy with a limb-graph policy net and a limb-graph state value.

    The Gaussian's mean is the policy net's action tanh(pre-activation) in [-1, 1] (so the
    deterministic action is ``action_net(obs)``, SB3 clips samples into the action box), its
    log-std a learned vector with one entry per action dimension; torso and padded rows get no
    noise (:class:`MaskedDiagGaussian`). V(s) is :func:`saferl.policies.value.build_value` of
    the same kind and sizes.

    :param kind: "set", "transformer" or "mlp".
    :param net_config: dict (or config dataclass) of the kind's sizes; None = reference sizes.
    Other arguments as :class:`stable_baselines3.common.policies.ActorCriticPolicy`, except that
    ``net_arch`` is unused, and ``use_sde`` and ``ortho_init`` must stay False (the limb nets
    keep their own initialisation).
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
        _check_kind(kind, net_config, observation_space, action_space)
        for flag in ("use_sde", "ortho_init"):
            if kwargs.get(flag):
                raise ValueError(f"{flag}=True is not supported by the limb-graph PPO policy")
        self.kind, self.net_config = kind, net_config
        kwargs["ortho_init"] = False
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        space = (self.observation_space, self.action_space)
        self.action_net = build_actor(self.kind, *space, self.net_config, device="cpu")
        layout = self.action_net.layout
        value = build_value(self.kind, self.observation_space, self.net_config, device="cpu")
        self.mlp_extractor = ValueExtractor(value, layout.flat_dim)
        self.value_net = nn.Identity()
        self.log_std = nn.Parameter(torch.full((layout.action_dim,), float(self.log_std_init)))
        self.action_dist = MaskedDiagGaussian(layout.action_dim)
        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

    def _get_action_dist_from_latent(self, latent_pi: Tensor) -> MaskedDiagGaussian:
        mask = action_mask(latent_pi, self.action_net.layout)  # latent_pi is the flat obs
        return self.action_dist.proba_distribution(self.action_net(latent_pi), self.log_std, mask)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(kind=self.kind, net_config=self.net_config)
        return data


def deterministic_net(policy: nn.Module) -> nn.Module:
    """The policy net giving the deterministic action of a :class:`LimbTD3Policy`,
    :class:`LimbSACPolicy` or :class:`LimbActorCriticPolicy`: flat obs (B, flat_dim) ->
    actions (B, L*3) in [-1, 1], a module of :func:`saferl.policies.build_actor`."""
    if isinstance(policy, LimbActorCriticPolicy):
        return policy.action_net
    if isinstance(policy, (LimbTD3Policy, LimbSACPolicy)):
        return policy.actor.mu
    raise TypeError(f"expected a limb-graph SB3 policy, got {type(policy).__name__}")
