"""Certificates for diffusion policies with their randomness fixed.

A DDPM policy (Ho et al., NeurIPS 2020) turns Gaussian noise into an action by ``T`` reverse
steps of a noise network ``ε_θ(a_t, s, t)``; a policy that samples ``N`` candidate actions and
keeps the one with the least score ``Q(s, a)`` (FISOR, Zheng et al., ICLR 2024, Sec. 4.3: the
least feasibility value ``Q_h``) is, once every noise draw is fixed, a deterministic function
of the observation ``s``: a composition of ``T`` network calls per candidate and an argmin.

* :class:`DiffusionChain` unrolls the reverse chain of a candidate as one ``nn.Module`` of
  ``[s, z]`` (its noise draws are a part of the input that the bounds hold fixed: a box of zero
  width), so :func:`certify.compute_bounds` bounds the whole chain at once with
  IBP, CROWN or CROWN-IBP. Each reverse step is DDPM's posterior mean with the predicted
  ``x̂₀`` clipped (diffusers' ``DDPMScheduler.step``, ``clip_sample=True``) plus ``σ_t z``,
  then (as FISOR's sampler) the sample clipped to the action range.
* :func:`certify_diffusion_policy` bounds every candidate over the ``l_inf`` observation ball,
  bounds the score of every candidate over the ball × that candidate's action box, drops the
  candidates that can never be the argmin, and returns the hull of the others (sound bounds on
  the chosen action), the certified deviation and a feasibility certificate on the score.

Noise layout: ``noise`` of shape ``(T, N, A)`` (the same draws for every state) or
``(B, T, N, A)``: draw 0 is ``a_T``, draw ``k`` (``1 ≤ k < T``) the noise ``z`` of the ``k``-th
reverse step; the last step adds none (Ho et al. 2020, Algorithm 2: ``z = 0`` at ``t = 1``).
These are exactly the ``T`` draws of diffusers' sampling loop, in its order.

Noise network protocol: ``noise_net(a_t, s, t) -> ε`` with ``a_t`` of shape ``(B, A)``, ``s``
of shape ``(B, S)``, ``t`` a Python ``int`` (the diffusion timestep, fixed when the chain is
traced), output ``(B, A)``; it must be traceable by :func:`certify.trace` (wrap a network that
takes ``[a_t, s, c(t)]`` rows, e.g. by folding the constant time embedding into the first
layer's bias). Candidates are rows of the batch (``B·N`` rows for ``B`` states), so every
bound is per candidate and the engine never sees ``N``-fold wide layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from certify.bounds import compute_bounds


def clip(x: Tensor, r: float) -> Tensor:
    """``clamp(x, −r, r)``: the engine's clamp operator bounds it exactly under IBP (a monotone
    map of the interval) and by its hard-tanh relaxation under CROWN. (Written as
    ``relu(x + r) − relu(x − r) − r`` instead, IBP loses the dependence between the two ReLUs
    and doubles the width of every clipped interval.)"""
    return torch.clamp(x, -r, r)


@dataclass(frozen=True)
class DDPMSteps:
    """Per reverse step ``k`` (timestep ``t = timesteps[k]``, previous ``t'``; DDPM Eq. 6–7,
    15, with ``ᾱ_{t'} = 1`` after the last step), tuples of ``K`` Python floats (float64):

    * ``x0_scale = 1/√ᾱ_t``, ``x0_eps = √(1 − ᾱ_t)/√ᾱ_t``: ``x̂₀ = x0_scale·a_t − x0_eps·ε``;
    * ``mean_x0 = √ᾱ_{t'} β_t/(1 − ᾱ_t)``, ``mean_xt = √α_t (1 − ᾱ_{t'})/(1 − ᾱ_t)`` with
      ``α_t = ᾱ_t/ᾱ_{t'}``, ``β_t = 1 − α_t``: the posterior mean ``μ = mean_x0·x̂₀ + mean_xt·a_t``;
    * ``sigma = √(max(β_t (1 − ᾱ_{t'})/(1 − ᾱ_t), 1e-20))`` (diffusers' "fixed_small"), 0 on the
      last step.
    """

    timesteps: tuple[int, ...]
    x0_scale: tuple[float, ...]
    x0_eps: tuple[float, ...]
    mean_x0: tuple[float, ...]
    mean_xt: tuple[float, ...]
    sigma: tuple[float, ...]


def ddpm_steps(alphas_cumprod: Tensor, timesteps: Sequence[int]) -> DDPMSteps:
    """The constants of the reverse steps at ``timesteps`` (descending, e.g. ``[4, 3, 2, 1, 0]``)
    from the cumulative products ``ᾱ`` (``(T_train,)``, in ``(0, 1]``): see :class:`DDPMSteps`.
    The previous timestep is the next one in the list (diffusers' ``previous_timestep``)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps must name at least one reverse step")
    decreasing = all(a > b for a, b in zip(ts, ts[1:], strict=False))
    if not decreasing or any(not 0 <= t < abar.numel() for t in ts):
        raise ValueError(f"timesteps must be strictly decreasing in [0, {abar.numel()}), "
                         f"got {ts}")  # fmt: skip
    if not (torch.isfinite(abar).all() and (abar > 0).all() and (abar <= 1).all()):
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    rows = []
    for k, t in enumerate(ts):
        a_t = float(abar[t])
        a_prev = float(abar[ts[k + 1]]) if k + 1 < len(ts) else 1.0
        alpha, beta = a_t / a_prev, 1.0 - a_t / a_prev
        if a_t >= 1.0:
            raise ValueError(f"alphas_cumprod[{t}] = 1 leaves no noise to remove")
        last = k + 1 == len(ts)
        sigma = 0.0 if last else math.sqrt(max(beta * (1 - a_prev) / (1 - a_t), 1e-20))
        rows.append((1 / math.sqrt(a_t), math.sqrt(1 - a_t) / math.sqrt(a_t),
                     math.sqrt(a_prev) * beta / (1 - a_t),
                     math.sqrt(alpha) * (1 - a_prev) / (1 - a_t), sigma))  # fmt: skip
    cols = list(zip(*rows, strict=True))
    return DDPMSteps(tuple(ts), *cols)


class DiffusionChain(nn.Module):
    """The unrolled reverse chain of one candidate: ``[s, z] (B, S + T·A) -> a_0 (B, A)``; the
    ``N`` candidates of a state are ``N`` rows (:meth:`pack`, :meth:`candidates`).

    Each step (Ho et al. 2020, Eq. 15 and 7; diffusers' ``DDPMScheduler.step``):
    ``ε = ε_θ(a_t, s, t)``, ``x̂₀ = clip(a_t/√ᾱ_t − √(1−ᾱ_t)/√ᾱ_t · ε, x0_clip)``,
    ``a_{t'} = clip(mean_x0·x̂₀ + mean_xt·a_t + σ_t z_k, sample_clip)``.

    Args:
        noise_net: the noise network (see the module docstring for its protocol); put it in
            eval mode (dropout off) before bounding.
        alphas_cumprod: ``ᾱ`` of the training schedule, ``(T_train,)``.
        timesteps: the reverse steps, descending (``T`` of them).
        obs_dim: ``S``; act_dim: ``A``; num_candidates: ``N``.
        x0_clip: clip range of ``x̂₀`` (diffusers' ``clip_sample_range``); None: no clipping.
        sample_clip: clip range of every sample after its step (FISOR's sampler: 1); None: none.
    """

    def __init__(
        self,
        noise_net: nn.Module,
        alphas_cumprod: Tensor,
        timesteps: Sequence[int],
        obs_dim: int,
        act_dim: int,
        num_candidates: int,
        x0_clip: float | None = 1.0,
        sample_clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        if min(obs_dim, act_dim, num_candidates) < 1:
            raise ValueError(f"obs_dim, act_dim and num_candidates must be >= 1, got {obs_dim}, "
                             f"{act_dim}, {num_candidates}")  # fmt: skip
        for name, r in (("x0_clip", x0_clip), ("sample_clip", sample_clip)):
            if r is not None and not (math.isfinite(r) and r > 0):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {r!r}")
        self.noise_net = noise_net
        self.steps = ddpm_steps(alphas_cumprod, timesteps)
        self.obs_dim, self.act_dim, self.num_candidates = obs_dim, act_dim, num_candidates
        self.x0_clip, self.sample_clip = x0_clip, sample_clip

    @property
    def num_draws(self) -> int:
        """``T``: noise draws per candidate (``a_T`` and one per step but the last)."""
        return len(self.steps.timesteps)

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """``(T, N, A)``."""
        return (self.num_draws, self.num_candidates, self.act_dim)

    def forward(self, x: Tensor) -> Tensor:
        """One candidate per row: ``x = [s, z]`` (B, S + T·A), ``z`` its ``T`` noise draws
        (:meth:`pack`) -> the candidate ``a_0`` (B, A)."""
        S, (T, _, A) = self.obs_dim, self.noise_shape
        s = x[:, :S]
        a = x[:, S : S + A]
        for k in range(T):
            z = x[:, S + (k + 1) * A : S + (k + 2) * A] if k + 1 < T else None
            a = self.step(k, a, s, z)
        return a

    def step(self, k: int, a: Tensor, s: Tensor, z: Tensor | None) -> Tensor:
        """Reverse step ``k``: ``a_t (B, A)``, ``s (B, S)``, its noise ``z (B, A)`` (None on the
        last step) -> ``a_{t'} (B, A)``."""
        st = self.steps
        eps = self.noise_net(a, s, st.timesteps[k])
        x0 = st.x0_scale[k] * a - st.x0_eps[k] * eps
        if self.x0_clip is not None:
            x0 = clip(x0, self.x0_clip)
        a = st.mean_x0[k] * x0 + st.mean_xt[k] * a
        if z is not None:
            a = a + st.sigma[k] * z
        if self.sample_clip is not None:
            a = clip(a, self.sample_clip)
        return a

    def check_noise(self, noise: Tensor, batch: int) -> Tensor:
        """``noise`` as ``(B, T, N, A)`` (a ``(T, N, A)`` draw is shared by every state)."""
        if not isinstance(noise, Tensor) or not noise.is_floating_point():
            raise TypeError("noise must be a floating-point tensor of shape (T, N, A) or "
                            "(B, T, N, A)")  # fmt: skip
        shape = self.noise_shape
        if tuple(noise.shape) == shape:
            noise = noise.expand(batch, *shape)
        if tuple(noise.shape) != (batch, *shape):
            raise ValueError(f"noise must have shape {shape} or {(batch, *shape)} (T draws, "
                             f"N candidates, A action dims), got {tuple(noise.shape)}")  # fmt: skip
        if not torch.isfinite(noise).all():
            raise ValueError("noise contains NaN or infinite values")
        return noise

    def pack(self, obs: Tensor, noise: Tensor) -> Tensor:
        """The chain's rows ``[s_b, z_{b,j}]`` (B·N, S + T·A), state-major, from ``obs`` (B, S)
        and ``noise``."""
        if not isinstance(obs, Tensor) or obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            got = tuple(obs.shape) if isinstance(obs, Tensor) else type(obs).__name__
            raise ValueError(f"obs must have shape (B, {self.obs_dim}), got {got}")
        B, N = obs.shape[0], self.num_candidates
        z = self.check_noise(noise, B).to(obs).permute(0, 2, 1, 3).reshape(B * N, -1)
        return torch.cat([obs.repeat_interleave(N, dim=0), z], dim=1)

    def candidates(self, obs: Tensor, noise: Tensor) -> Tensor:
        """The ``N`` candidate actions ``(B, N, A)`` for ``obs`` (B, S) with ``noise`` fixed."""
        return self(self.pack(obs, noise)).reshape(obs.shape[0], self.num_candidates, -1)

    def input_box(self, obs: Tensor, eps, noise: Tensor, x_min=None, x_max=None):
        """The box of the chain's rows (B·N, S + T·A): ``s`` in the ``l_inf`` ball of radius
        ``eps`` (a float or a tensor broadcastable to ``obs``), clipped to ``[x_min, x_max]``;
        the noise fixed (zero width)."""
        o_lo, o_hi = observation_box(obs, eps, x_min, x_max)
        return self.pack(o_lo, noise), self.pack(o_hi, noise)


class ChainStep(nn.Module):
    """Reverse step ``k`` of a :class:`DiffusionChain` as a module of one packed row:
    ``[s, a_t, z] (B, S + 2A) -> a_{t'} (B, A)`` (``z`` absent on the last step), so one step
    can be bounded over a box of ``(s, a_t)`` (:func:`candidate_bounds` with ``steps=True``)."""

    def __init__(self, chain: DiffusionChain, k: int) -> None:
        super().__init__()
        if not 0 <= k < chain.num_draws:
            raise ValueError(f"step index must be in [0, {chain.num_draws}), got {k}")
        self.chain, self.k = chain, k

    @property
    def last(self) -> bool:
        return self.k + 1 == self.chain.num_draws

    def forward(self, x: Tensor) -> Tensor:
        S, A = self.chain.obs_dim, self.chain.act_dim
        z = None if self.last else x[:, S + A : S + 2 * A]
        return self.chain.step(self.k, x[:, S : S + A], x[:, :S], z)


def _step_modules(chain: DiffusionChain) -> list[ChainStep]:
    """The chain's :class:`ChainStep` modules, made once (the bound engine caches each one's
    traced graph); kept outside the module tree (no parameter is registered twice)."""
    steps = chain.__dict__.get("_step_modules")
    if steps is None:
        steps = [ChainStep(chain, k) for k in range(chain.num_draws)]
        chain.__dict__["_step_modules"] = steps
    return steps


def observation_box(obs: Tensor, eps, x_min=None, x_max=None) -> tuple[Tensor, Tensor]:
    """``[obs − eps, obs + eps] ∩ [x_min, x_max]``, (B, S) each; eps finite and >= 0."""
    e = torch.as_tensor(eps, dtype=obs.dtype, device=obs.device)
    if not (torch.isfinite(e).all() and (e >= 0).all()):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if not torch.isfinite(obs).all():
        raise ValueError("obs contains NaN or infinite values")
    lo, hi = obs - e, obs + e
    if x_min is not None:
        mn = torch.as_tensor(x_min, dtype=obs.dtype, device=obs.device)
        lo, hi = torch.maximum(lo, mn), torch.maximum(hi, mn)
    if x_max is not None:
        mx = torch.as_tensor(x_max, dtype=obs.dtype, device=obs.device)
        lo, hi = torch.minimum(lo, mx), torch.minimum(hi, mx)
    return lo, hi


def select_action(chain: DiffusionChain, critic: nn.Module, obs: Tensor, noise: Tensor):
    """The policy's action: the candidate with the least score ``max_m critic([s, a])_m``
    (FISOR Sec. 4.3; first index on ties, as ``torch.argmin``). Returns ``(action (B, A),
    candidates (B, N, A), scores (B, N), chosen index (B,))``."""
    cand = chain.candidates(obs, noise)
    scores = candidate_scores(critic, obs, cand)
    best = scores.argmin(dim=1)
    return cand[torch.arange(cand.shape[0], device=cand.device), best], cand, scores, best


def candidate_scores(critic: nn.Module, obs: Tensor, cand: Tensor) -> Tensor:
    """``max_m critic([s, a_j])_m`` for every candidate, (B, N)."""
    B, N, A = cand.shape
    z = torch.cat([obs.unsqueeze(1).expand(B, N, -1), cand], -1).reshape(B * N, -1)
    return critic(z).reshape(B, N, -1).amax(-1)


def surviving_candidates(score_lower: Tensor, score_upper: Tensor, tol: float = 1e-5) -> Tensor:
    """(B, N) mask of the candidates that may be the argmin of the scores somewhere in the set.

    Candidate ``j`` is dropped only when ``score_lower_j > min_{k≠j} score_upper_k + tol``:
    then some ``k`` scores strictly less than ``j`` at every point of the set, so ``j`` is never
    the argmin, whatever the ties. ``tol`` (>= 0, scaled by ``1 + |score_upper_k|``) absorbs
    the rounding of the scores themselves. The candidate with the least upper bound always
    survives.
    """
    if score_lower.shape != score_upper.shape or score_lower.dim() != 2:
        raise ValueError(f"score bounds must both be (B, N), got {tuple(score_lower.shape)} "
                         f"and {tuple(score_upper.shape)}")  # fmt: skip
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    N = score_upper.shape[1]
    if N == 1:
        return torch.ones_like(score_upper, dtype=torch.bool)
    margin = score_upper + tol * (1 + score_upper.abs())
    two = margin.topk(2, dim=1, largest=False)
    best_other = two.values[:, :1].expand_as(margin).clone()  # min over k != j ...
    is_min = torch.arange(N, device=margin.device) == two.indices[:, :1]
    best_other[is_min] = two.values[:, 1:].expand_as(margin)[is_min]  # ... j the min: 2nd least
    return ~(score_lower > best_other)


@dataclass
class DiffusionCertificate:
    """Per-state results of :func:`certify_diffusion_policy` (B states, N candidates, A dims).

    ``action`` is the nominal chosen action, ``score`` its score at the unperturbed observation,
    and ``action_lower``/``action_upper`` sound bounds
    on the chosen action at every observation of the ball (the hull of the surviving
    candidates' boxes). ``score_upper`` bounds the chosen action's score (its least candidate
    score is at most ``min_j score_upper_j``, a bound valid because the policy takes the argmin);
    ``set_score_upper`` bounds the score over the ball × every surviving candidate's box (the
    certified action set). ``certified``: ``score_upper <= threshold``.
    """

    action: Tensor
    score: Tensor
    action_lower: Tensor
    action_upper: Tensor
    candidate_lower: Tensor
    candidate_upper: Tensor
    candidate_score_lower: Tensor
    candidate_score_upper: Tensor
    surviving: Tensor
    score_upper: Tensor
    set_score_upper: Tensor
    certified: Tensor
    certified_set: Tensor

    @property
    def deviation(self) -> Tensor:
        """(B,) certified deviation ``max_i |π(s')_i − π(s)_i|`` over the ball."""
        return torch.maximum(self.action_upper - self.action, self.action - self.action_lower
                             ).amax(-1)  # fmt: skip

    @property
    def fraction(self) -> float:
        """Fraction of states whose chosen action is certified (score ≤ threshold)."""
        return float(self.certified.float().mean())


METHODS = ("ibp", "crown", "crown-ibp")


def candidate_bounds(
    chain: DiffusionChain,
    obs: Tensor,
    eps,
    noise: Tensor,
    method: str = "crown",
    x_min=None,
    x_max=None,
    steps: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sound bounds ``(B, N, A)`` each on every candidate over the ``l_inf`` ball around
    ``obs`` with ``noise`` fixed, intersected with the sample clip range.

    ``steps=False``: one call of :func:`certify.compute_bounds` on the whole unrolled chain (the
    dependence of every step on ``s`` and on the earlier steps is kept: tightest with CROWN,
    Zhang et al. NeurIPS 2018, whose intermediate bounds make its cost grow with the square of
    the depth; IBP, Gowal et al. 2018, is vacuous through deep LayerNorm nets).
    ``steps=True``: one call per reverse step, each over the box of ``(s, a_t)`` the previous
    step left (a box composition: looser, the ``T`` shallow problems far cheaper with CROWN).
    Both are sound.
    """
    B, (_, N, A) = obs.shape[0], chain.noise_shape
    r_lo, r_hi = chain.input_box(obs, eps, noise, x_min, x_max)  # (B·N, S + T·A)
    if not steps:
        with torch.no_grad():
            lo, hi = compute_bounds(chain, (r_lo, r_hi), method=method)
        lo, hi = _clip_bounds(chain, lo, hi)
        return lo.reshape(B, N, A), hi.reshape(B, N, A)
    S = chain.obs_dim
    a_lo, a_hi = r_lo[:, S : S + A], r_hi[:, S : S + A]
    for k, module in enumerate(_step_modules(chain)):
        z_k = [] if module.last else [r_lo[:, S + (k + 1) * A : S + (k + 2) * A]]
        box = (torch.cat([r_lo[:, :S], a_lo, *z_k], 1), torch.cat([r_hi[:, :S], a_hi, *z_k], 1))
        with torch.no_grad():
            a_lo, a_hi = compute_bounds(module, box, method=method)
        a_lo, a_hi = _clip_bounds(chain, a_lo, a_hi)
    return a_lo.reshape(B, N, A), a_hi.reshape(B, N, A)


def _clip_bounds(chain: DiffusionChain, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds intersected with the sample clip range (every sample lies in it)."""
    if chain.sample_clip is None:
        return lo, hi
    r = chain.sample_clip
    return lo.clamp(-r, r), hi.clamp(-r, r)


def score_bounds(critic: nn.Module, o_lo: Tensor, o_hi: Tensor, a_lo: Tensor, a_hi: Tensor,
                 method: str = "crown") -> tuple[Tensor, Tensor]:  # fmt: skip
    """Bounds (B, N) on ``max_m critic([s, a])_m`` over ``s ∈ [o_lo, o_hi]`` (B, S) and
    ``a ∈ [a_lo, a_hi]`` (B, N, A), per candidate (max of the members' bounds)."""
    B, N, _ = a_lo.shape
    z_lo = torch.cat([o_lo.unsqueeze(1).expand(B, N, -1), a_lo], -1).reshape(B * N, -1)
    z_hi = torch.cat([o_hi.unsqueeze(1).expand(B, N, -1), a_hi], -1).reshape(B * N, -1)
    with torch.no_grad():
        q_lo, q_hi = compute_bounds(critic, (z_lo, z_hi), method=method)
    return q_lo.reshape(B, N, -1).amax(-1), q_hi.reshape(B, N, -1).amax(-1)


def certify_diffusion_policy(
    chain: DiffusionChain,
    critic: nn.Module,
    obs: Tensor,
    eps: float | Tensor,
    noise: Tensor,
    method: str = "crown",
    threshold: float = 0.0,
    x_min=None,
    x_max=None,
    tol: float = 1e-5,
    steps: bool = False,
) -> DiffusionCertificate:
    """Sound bounds on a diffusion policy's chosen action over the ``l_inf`` ball, and its
    feasibility certificate.

    1. Candidates: :func:`candidate_bounds` over the ball (the unrolled chain, noise fixed).
    2. Scores: the selection score ``max_m critic([s, a_j])_m`` of every candidate bounded over
       the ball × the candidate's box (:func:`score_bounds`).
    3. Selection: candidates that can never be the argmin are dropped
       (:func:`surviving_candidates`); the chosen action lies in the hull of the others.
    4. Feasibility: the chosen action's score is the least candidate score, so it is at most
       ``min_j score_upper_j`` at every point of the ball; ``certified`` when that is
       ``<= threshold`` (FISOR: ``Q_h ≤ 0``, the action keeps the state feasible). The
       score over the whole certified set (ball × every surviving box) is reported too.

    Args:
        chain: the unrolled sampler; critic: ``[s, a] (B, S + A) -> (B, m)`` scores (FISOR: the
            target ``Q_h`` members), the score being their max. obs: (B, S). eps: radius.
        noise: ``(T, N, A)`` or ``(B, T, N, A)`` (see the module docstring).
        method: ``"ibp"``, ``"crown"`` or ``"crown-ibp"`` (for both the chain and the critic).
        threshold: feasibility threshold on the score. x_min, x_max: data bounds of ``obs``.
        tol: rounding margin of the eliminations (see :func:`surviving_candidates`).
        steps: bound the chain step by step (see :func:`candidate_bounds`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    o_lo, o_hi = observation_box(obs, eps, x_min, x_max)
    cand_lo, cand_hi = candidate_bounds(chain, obs, eps, noise, method, x_min, x_max, steps)
    with torch.no_grad():
        action, _, scores, _ = select_action(chain, critic, obs, noise)
    q_lo, q_hi = score_bounds(critic, o_lo, o_hi, cand_lo, cand_hi, method)
    alive = surviving_candidates(q_lo, q_hi, tol)
    big = torch.finfo(cand_lo.dtype).max
    a_lo = cand_lo.masked_fill(~alive.unsqueeze(-1), big).amin(1)
    a_hi = cand_hi.masked_fill(~alive.unsqueeze(-1), -big).amax(1)
    score_upper = q_hi.amin(1)
    set_upper = q_hi.masked_fill(~alive, -math.inf).amax(1)
    return DiffusionCertificate(action, scores.amin(1), a_lo, a_hi, cand_lo, cand_hi, q_lo,
                                q_hi, alive, score_upper, set_upper, score_upper <= threshold,
                                set_upper <= threshold)  # fmt: skip
