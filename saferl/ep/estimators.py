"""Neuronal error vectors and parameter gradients: one-sided EP, holomorphic EP, exact, RBP.

All estimators return an error vector ``v`` of shape (batch, n) that approximates
``d rho(u*_beta) / d beta`` at ``beta = 0`` (NeurIPS 2022, Eq. 4-6; ICLR 2024, Eq. 3):

* ``N = 1`` one-sided EP:     v = (rho(u_beta) - rho(u*)) / beta
* ``N >= 2`` holomorphic EP:  v = (1/N)sum_k rho(u_{beta_k})/beta_k, beta_k = |beta| e^{2 pi i k/N}
  (Cauchy's integral formula for the first Taylor coefficient; bias O(|beta|^N), complex
  arithmetic, so the activation and readout must be holomorphic)
* ``N = 0`` exact derivative: forward-mode AD in beta through the T2 nudged steps.

Each nudged phase starts from ``u*`` and runs ``T2`` steps; the ``N`` phases of the Cauchy
estimate run side by side as one batch (leading dimension N).

The reference is recurrent backprop (RBP): ``delta = -J_u^{-T} dl/du`` by iterating
``delta <- delta + J_u^T delta + dl/du`` (Almeida 1987; Pineda 1987). :func:`rbp_error` returns
``-delta``, which is what ``v`` equals when the Jacobian is symmetric in the whitened coordinates
of :mod:`saferl.ep.homeostasis`, so cosines compare like with like.

The gradient of the mean loss is ``dl/dtheta = -(dF/dtheta)^T v`` (implicit function theorem),
computed by :func:`dynamics_gradients` with one vector-Jacobian product, never forming dF/dtheta.
"""

from __future__ import annotations

import cmath
import math

import torch
from torch import Tensor

from saferl.ep.network import EPNetwork


def check_estimator(net: EPNetwork, n_points: int, beta: float) -> None:
    """Validate (N, beta) against the network: ValueError before any work is done.

    Rules: N is an int >= 0; beta finite; beta != 0 whenever N >= 1; N >= 2 needs a
    holomorphic activation (complex nudges)."""
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 0:
        raise ValueError(f"n_points (N) must be an int >= 0, got {n_points!r}")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if n_points >= 1 and beta == 0.0:
        raise ValueError(
            f"beta = 0 is not allowed for N = {n_points} >= 1: the finite-difference/Cauchy "
            "estimate divides by beta; use N = 0 for the exact derivative"
        )
    if n_points >= 2 and not net.act.holomorphic:
        raise ValueError(
            f"N = {n_points} >= 2 runs complex nudges and needs a holomorphic activation; "
            f"{net.act.name!r} is not (use e.g. 'sigmoid4', 'holo_sigmoid' or 'tanh', or N <= 1)"
        )


def cauchy_points(n_points: int, beta: float) -> list[complex]:
    """``beta_k = |beta| e^{2 pi i k / N}``, k = 0..N-1 (for N = 1: the real ``beta`` itself)."""
    if n_points == 1:
        return [complex(beta)]
    return [abs(beta) * cmath.exp(2j * math.pi * k / n_points) for k in range(n_points)]


def ep_error(
    net: EPNetwork,
    x: Tensor,
    y: Tensor,
    u_star: Tensor,
    n_points: int = 2,
    beta: float = 0.1,
    t2: int = 20,
) -> Tensor:
    """EP neuronal error vector ``v ~ d rho(u*_beta)/d beta`` (batch, n); N = 0 is exact.

    x (batch, d), y (batch,), u_star (batch, n) the free fixed point."""
    check_estimator(net, n_points, beta)
    net.check_input(x, y)
    if u_star.shape != (*x.shape[:-1], net.n_units):
        raise ValueError(
            f"u_star must have shape {(*x.shape[:-1], net.n_units)}, got {tuple(u_star.shape)}"
        )
    if t2 < 1:
        raise ValueError(f"t2 must be >= 1, got {t2}")
    u_star = u_star.detach()
    if n_points == 0:
        return exact_error(net, x, y, u_star, t2)
    r_star = net.rho(u_star)
    with torch.no_grad():
        if n_points == 1:
            u_b = net.relax(u_star, x, t2, beta, y)
            return (net.rho(u_b) - r_star) / beta
        ctype = torch.complex128 if u_star.dtype == torch.float64 else torch.complex64
        betas = torch.tensor(cauchy_points(n_points, beta), dtype=ctype, device=x.device)
        betas = betas.view(-1, *([1] * u_star.dim()))  # (N, 1, 1)
        # x and y broadcast over the N phases; the state is materialised (fast matmuls).
        u0 = u_star.to(ctype).expand(n_points, *u_star.shape).contiguous()
        u_b = net.relax(u0, x.to(ctype), t2, betas, y)
        # (1/N) sum_k (rho(u_k) - rho(u*)) / beta_k; the rho(u*) term sums to 0 for N >= 2 and
        # is subtracted only to reduce round-off.
        v = ((net.rho(u_b) - r_star.to(ctype)) / betas).mean(0)
        return v.real.to(u_star.dtype)


def exact_error(net: EPNetwork, x: Tensor, y: Tensor, u_star: Tensor, t2: int = 20) -> Tensor:
    """``d rho(u_T(beta)) / d beta`` at 0 by forward-mode AD (torch.func.jvp); (batch, n)."""
    u_star = u_star.detach()
    zero = torch.zeros((), dtype=u_star.dtype, device=u_star.device)

    def rates_after_nudge(beta: Tensor) -> Tensor:
        return net.rho(net.relax(u_star, x, t2, beta, y))

    with torch.no_grad():
        return torch.func.jvp(rates_after_nudge, (zero,), (torch.ones_like(zero),))[1]


def rbp_error(
    net: EPNetwork,
    x: Tensor,
    y: Tensor,
    u_star: Tensor,
    steps: int = 100,
    return_residual: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Recurrent-backprop error ``-delta = J_u^{-T} dl/du`` at ``u*`` (batch, n).

    Iterates ``delta <- delta + J_u^T delta + dl/du`` (vector-Jacobian products, J never formed).
    With ``return_residual`` also returns ||J^T delta + dl/du|| per sample (batch,)."""
    net.check_input(x, y)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u_star = u_star.detach()
    with torch.no_grad():
        dl_du = net.rho_prime(u_star) * net.loss_grad_rates(u_star, y)
    _, vjp_fn = torch.func.vjp(lambda u: net.vector_field(u, x), u_star)
    delta = torch.zeros_like(u_star)
    with torch.no_grad():
        for _ in range(steps):
            delta = delta + vjp_fn(delta)[0] + dl_du
        if not return_residual:
            return -delta
        residual = (vjp_fn(delta)[0] + dl_du).norm(dim=-1)
    return -delta, residual


def dynamics_gradients(net: EPNetwork, x: Tensor, u_star: Tensor, v: Tensor) -> list[Tensor]:
    """Loss-gradient estimate ``-(dF/dtheta)^T v / batch`` for W, b, B (as dynamics_parameters()).

    u* held fixed; one vector-Jacobian product."""
    params = net.dynamics_parameters()
    f = net.vector_field(u_star.detach(), x)
    batch = max(1, u_star[..., 0].numel())
    grads = torch.autograd.grad(-(f * v.detach()).sum() / batch, params)
    return list(grads)


def readout_gradients(net: EPNetwork, u_star: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Mean readout loss at the fixed point and its direct gradient w.r.t. (R, c)."""
    loss = net.loss(u_star.detach(), y).mean()
    return loss, list(torch.autograd.grad(loss, net.readout_parameters()))


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine between two tensors flattened (the batch counts as one long vector)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def layer_cosines(net: EPNetwork, a: Tensor, b: Tensor) -> list[float]:
    """Cosine per dynamical layer between two error vectors (batch, n)."""
    return [cosine(p, q) for p, q in zip(net.split(a), net.split(b), strict=True)]
