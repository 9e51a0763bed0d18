"""FISOR's diffusion policy as :mod:`certify.diffusion` sees it (the FISOR-specific glue).

* :class:`CandidateNoiseNet` — FISOR's noise network :class:`~saferl.offline.networks.LNResNetNoise`
  with the diffusion time fixed: the time embedding ``c(t)`` is a
  constant, folded with the first layer's bias (``W [a, s, c] + b = W_a a + W_s s + (W_c c +
  b)``), so the bound engine traces it.
* :func:`diffusion_chain` — the unrolled sampler of an agent: the EMA actor, the ``ᾱ`` and
  timesteps of its diffusers ``DDPMScheduler``, its ``x̂₀`` clip range and the clip of every
  sample to [−1, 1] (:meth:`saferl.offline.fisor.FISOR.sample_candidates`).
* :func:`selection_critic` — the target ``Q_h`` members side by side, ``[s, a] -> (B, E)``:
  the candidates' score is their max (:meth:`FISOR.act_tensor`).
* :func:`sampler_noise` — the sampler's ``T`` draws in the order ``sample_candidates`` makes
  them from a generator, so the chain with this noise reproduces the agent's own sampling.
* :func:`certify_fisor` — :func:`certify.diffusion.certify_diffusion_policy` on an agent.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from certify.diffusion import DiffusionCertificate, DiffusionChain, certify_diffusion_policy
from saferl.offline.fisor import FISOR
from saferl.offline.networks import LNResNetNoise


class CandidateNoiseNet(nn.Module):
    """``ε_θ(a_t, s, t)`` of an :class:`LNResNetNoise` for ``a_t (B, A)``, ``s (B, S)`` and an
    ``int`` timestep ``t``; output ``(B, A)`` (the network's arithmetic on the rows
    ``[a_t, s, c(t)]``, up to float rounding)."""

    def __init__(self, net: LNResNetNoise, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        if net.inp.in_features <= obs_dim + act_dim:
            raise ValueError(f"the noise network takes {net.inp.in_features} inputs, expected "
                             f"{obs_dim} + {act_dim} + the time embedding")  # fmt: skip
        self.net, self.obs_dim, self.act_dim = net, obs_dim, act_dim

    def forward(self, a: Tensor, s: Tensor, t: int) -> Tensor:
        net, A, S = self.net, self.act_dim, self.obs_dim
        w = net.inp.weight
        c = net.time(torch.full((1,), float(t), device=w.device))  # (1, time_hidden), constant
        bias = F.linear(c, w[:, A + S :], net.inp.bias)  # (1, width)
        h = F.linear(a, w[:, :A]) + F.linear(s, w[:, A : A + S]) + bias
        return net.out(F.mish(net.blocks(h)))


class MemberStack(nn.Module):
    """Members of an ensemble side by side: ``z (B, in) -> (B, E)`` (each member a
    ``(B, in) -> (B, 1)`` network)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("MemberStack needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([m(z) for m in self.members], dim=-1)


def diffusion_chain(agent: FISOR, num_candidates: int | None = None) -> DiffusionChain:
    """The agent's sampler unrolled (EMA actor in eval mode; ``num_candidates`` default: the
    config's ``N``)."""
    sched = agent.scheduler
    actor = agent.nets.actor_ema.eval()
    clip = float(sched.config.clip_sample_range) if sched.config.clip_sample else None
    return DiffusionChain(
        CandidateNoiseNet(actor, agent.obs_dim, agent.act_dim),
        sched.alphas_cumprod,
        [int(t) for t in sched.timesteps],
        agent.obs_dim,
        agent.act_dim,
        num_candidates or agent.config.num_candidates,
        x0_clip=clip,
        sample_clip=1.0,
    )


def selection_critic(agent: FISOR) -> MemberStack:
    """The target ``Q_h`` members as plain networks side by side, ``[s, a] (B, S + A) ->
    (B, E)`` (copies: later updates of the agent do not show)."""
    q_h = agent.nets.q_h_target
    return MemberStack([q_h.member(k) for k in range(q_h.ensemble)]).eval()


def sampler_noise(
    chain: DiffusionChain, batch: int, generator: torch.Generator, device=None
) -> Tensor:
    """``(B, T, N, A)`` draws in the order :meth:`FISOR.sample_candidates` makes them (``a_T``
    for all ``B·N`` rows, then the noise of each step but the last, state-major rows)."""
    T, N, A = chain.noise_shape
    draws = [torch.randn((batch * N, A), generator=generator, device=device) for _ in range(T)]
    return torch.stack([d.reshape(batch, N, A) for d in draws], dim=1)


def certify_fisor(
    agent: FISOR,
    obs: Tensor,
    eps: float,
    method: str = "crown",
    seed: int = 0,
    noise: Tensor | None = None,
) -> DiffusionCertificate:
    """The diffusion certificate of ``agent`` on ``obs`` (B, S): chosen-action bounds over the
    ball and ``Q_h^target ≤ 0`` feasibility; noise drawn as the sampler does from a generator
    seeded with ``seed`` unless given."""
    chain = diffusion_chain(agent)
    if noise is None:
        gen = torch.Generator(device=obs.device).manual_seed(seed)
        noise = sampler_noise(chain, obs.shape[0], gen, obs.device)
    return certify_diffusion_policy(chain, selection_critic(agent), obs, eps, noise, method)
