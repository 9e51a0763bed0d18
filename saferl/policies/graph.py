"""Pieces shared by the limb-graph policies: decoding the flat view, hop distances, masks.

Every policy in :mod:`saferl.policies` reads the padded flat observation of ``envs.layout``
and decodes the graph view (per-limb vectors, scalars, mask, parents) inside its forward pass,
so one network can act for every morphology of a suite in one vector env.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor

from envs.layout import ACTIONS_PER_LIMB, ObsLayout, decode_flat

NEG_INF = -1e9
"""Finite "minus infinity" for masked attention logits (no NaN when every key is masked)."""


def layout_for(observation_space: Any, action_space: Any | None = None) -> ObsLayout:
    """The limb layout of a flat Box observation space (and a check of the action space).

    Raises ValueError when the observation size matches no layout or the action space is not
    a Box of ``max_limbs * 3`` torques; TypeError when the spaces are not Boxes.
    """
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise TypeError(
            f"expected a flat gymnasium Box observation space, got {observation_space!r}"
        )
    layout = ObsLayout.from_flat_dim(int(observation_space.shape[0]))
    if action_space is not None:
        if not isinstance(action_space, spaces.Box):
            raise TypeError(f"expected a gymnasium Box action space, got {action_space!r}")
        if tuple(action_space.shape) != (layout.action_dim,):
            raise ValueError(
                f"action space shape {tuple(action_space.shape)} does not match the observation "
                f"layout of {layout.max_limbs} limbs: expected ({layout.action_dim},)"
            )
    return layout


def check_obs(obs: Tensor, layout: ObsLayout) -> None:
    """ValueError unless ``obs`` is a batch ``(B, layout.flat_dim)``."""
    if obs.dim() != 2 or obs.shape[-1] != layout.flat_dim:
        # from_flat_dim names the problem when the size matches no layout at all
        ObsLayout.from_flat_dim(int(obs.shape[-1]))
        raise ValueError(
            f"observation batch of shape {tuple(obs.shape)} does not match this policy: "
            f"expected (batch, {layout.flat_dim}) for {layout.max_limbs} limbs"
        )


def graph_view(obs: Tensor, layout: ObsLayout) -> dict[str, Tensor]:
    """Decoded graph view of a flat batch ``(B, flat_dim)``.

    Returns ``vectors`` (B, L, 8, 3), ``scalars`` (B, L, 26), ``mask`` (B, L) bool (real limb),
    ``parents`` (B, L) long (-1 for torso/padding) and ``act_mask`` (B, L) float: 1 for limbs
    whose hinges the env actuates (real, non-torso).
    """
    check_obs(obs, layout)
    view = decode_flat(obs)
    mask = view["mask"] > 0.5
    parents = torch.round(view["parents"]).long()
    act_mask = (mask & (parents >= 0)).to(obs.dtype)
    return {
        "vectors": view["vectors"],
        "scalars": view["scalars"],
        "mask": mask,
        "parents": parents,
        "act_mask": act_mask,
    }


def hop_distances(parents: Tensor, max_hops: int) -> Tensor:
    """Tree hop distances ``(B, L, L)`` long, capped: pairs further than ``max_hops`` (or not
    connected, e.g. padding) get ``max_hops + 1``. ``parents`` (B, L) with -1 for roots."""
    batch, n = parents.shape
    valid = (parents >= 0) & (parents < n)
    child_to_parent = F.one_hot(parents.clamp(0, n - 1), n).to(torch.float32)
    child_to_parent = child_to_parent * valid.unsqueeze(-1)
    adjacency = child_to_parent + child_to_parent.transpose(1, 2)
    eye = torch.eye(n, device=parents.device).expand(batch, n, n)
    reach = eye > 0
    dist = torch.full((batch, n, n), max_hops + 1, dtype=torch.long, device=parents.device)
    dist = dist.masked_fill(reach, 0)
    for hop in range(1, max_hops + 1):
        grown = (reach.to(torch.float32) @ adjacency) > 0
        newly = grown & ~reach
        dist = dist.masked_fill(newly, hop)
        reach = reach | grown
    return dist


class GraphBias(torch.nn.Module):
    """Learned additive attention bias per head from hop distances (first layer only)."""

    def __init__(self, heads: int, max_hops: int) -> None:
        super().__init__()
        self.max_hops = max_hops
        self.table = torch.nn.Embedding(max_hops + 2, heads)
        torch.nn.init.zeros_(self.table.weight)

    def forward(self, parents: Tensor) -> Tensor:
        """``parents`` (B, L) -> bias (B, heads, L, L)."""
        dist = hop_distances(parents, self.max_hops)
        return self.table(dist).permute(0, 3, 1, 2)


def masked_softmax_attention(
    q: Tensor, k: Tensor, key_mask: Tensor, bias: Tensor | None = None
) -> Tensor:
    """Attention weights ``(B, H, L, L)`` from q, k ``(B, H, L, dh)``; padded keys get 0 weight.

    ``key_mask`` (B, L) bool marks real limbs; ``bias`` (B, H, L, L) is added to the logits.
    """
    logits = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
    if bias is not None:
        logits = logits + bias
    logits = logits.masked_fill(~key_mask[:, None, None, :], NEG_INF)
    return torch.softmax(logits, dim=-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (B, L, ...) over the limbs where ``mask`` (B, L) is true."""
    weights = mask.to(values.dtype)
    while weights.dim() < values.dim():
        weights = weights.unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def split_obs_actions(inputs: Tensor, layout: ObsLayout) -> tuple[Tensor, Tensor]:
    """Split SB3's critic input ``cat([obs, actions], 1)`` into obs (B, flat) and (B, L, 3)."""
    expected = layout.flat_dim + layout.action_dim
    if inputs.dim() != 2 or inputs.shape[-1] != expected:
        raise ValueError(
            f"critic input of shape {tuple(inputs.shape)}: expected (batch, {expected}) = "
            f"observation ({layout.flat_dim}) + actions ({layout.action_dim})"
        )
    obs, actions = inputs[:, : layout.flat_dim], inputs[:, layout.flat_dim :]
    return obs, actions.reshape(-1, layout.max_limbs, ACTIONS_PER_LIMB)
