"""Policies for the 3D locomotion suites: SET (subequivariant transformer), a limb transformer
without equivariance (SWAT-like) and an MLP, all mapping padded flat observations to torques;
SB3 glue for TD3, SAC and PPO; state values for PPO; the equivariance audit."""

from saferl.policies.audit import (
    action_orbit,
    invariance_error,
    orbit_angles,
    plot_orbits,
    reflect_flat,
    return_orbit,
    rotate_flat,
    rotation_z,
)
from saferl.policies.factory import KINDS, build_actor, build_critic, make_config
from saferl.policies.graph import hop_distances, layout_for
from saferl.policies.mlp import MLPActor, MLPConfig, MLPCritic
from saferl.policies.sb3 import (
    ClippedAdam,
    LimbActorCriticPolicy,
    LimbSACPolicy,
    LimbTD3Policy,
    deterministic_net,
)
from saferl.policies.set import SETActor, SETConfig, SETCritic, gram_invariants
from saferl.policies.soft_equivariance import (
    CANDIDATES,
    SoftInvariance,
    SoftInvarianceConfig,
    non_invariance,
)
from saferl.policies.transformer import TransformerActor, TransformerConfig, TransformerCritic
from saferl.policies.value import MLPValue, SETValue, TransformerValue, build_value

__all__ = [
    "CANDIDATES",
    "KINDS",
    "ClippedAdam",
    "LimbActorCriticPolicy",
    "LimbSACPolicy",
    "LimbTD3Policy",
    "MLPActor",
    "MLPConfig",
    "MLPCritic",
    "MLPValue",
    "SETActor",
    "SETConfig",
    "SETCritic",
    "SETValue",
    "SoftInvariance",
    "SoftInvarianceConfig",
    "TransformerActor",
    "TransformerConfig",
    "TransformerCritic",
    "TransformerValue",
    "action_orbit",
    "build_actor",
    "build_critic",
    "build_value",
    "deterministic_net",
    "gram_invariants",
    "hop_distances",
    "invariance_error",
    "layout_for",
    "make_config",
    "non_invariance",
    "orbit_angles",
    "plot_orbits",
    "reflect_flat",
    "return_orbit",
    "rotate_flat",
    "rotation_z",
]
