"""Jacobian homeostasis (Laborieux & Zenke, ICLR 2024, Sec. 4).

Which Jacobian. For ``F(u) = H(rho(u), x) - u`` the state Jacobian is ``J_u = H_r D - I`` with
``H_r = dH/dr`` and ``D = diag(rho'(u*))``. The EP error ``v = d rho/d beta = D J_u^{-1} e``
and the RBP error ``-delta = J_u^{-T} D e`` (``e = dl/dr``) become, in the whitened coordinates

    J = D^{1/2} J_u D^{-1/2} = D^{1/2} H_r D^{1/2} - I           (similar to J_u: same spectrum)

    v = D^{1/2} J^{-1} D^{1/2} e,        -delta = D^{1/2} J^{-T} D^{1/2} e,

so EP equals RBP exactly when ``J`` is symmetric (ICLR 2024, Thm. 1), and with ``J = S + A``
the error is ``v ~ -delta - 2 S^{-1} A (-delta)`` to first order in ``A`` (ICLR 2024, Eq. 9).
This module penalises the asymmetric part of that ``J``.

Penalty (ICLR 2024, Eq. 12): per sample, with eps ~ N(0, I) and n state units,

    L = (||J eps||^2 - eps^T J (J eps)) / n,  E[n L] = ||J||_F^2 - tr(J^2) = 1/2 ||J - J^T||_F^2,

two Jacobian-vector products (torch.func.jvp of the drive ``H`` w.r.t. the rates), never
forming J; averaged over the batch and the eps draws. Its gradient w.r.t. theta, with u* held
fixed, times a coefficient, is added to the EP gradient by the trainer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saferl.ep.network import EPNetwork


def whitened_jvp(net: EPNetwork, x: Tensor, u_star: Tensor):
    """Return ``t -> J t`` with ``J = D^{1/2} (dH/dr) D^{1/2} - I`` at ``u*`` (t: (..., batch, n)).

    Differentiable w.r.t. the network parameters; u* is held fixed."""
    u_star = u_star.detach()
    r = net.rho(u_star)
    s = net.rho_prime(u_star).clamp_min(0.0).sqrt()

    def jvp(t: Tensor) -> Tensor:
        lead = t.shape[: t.dim() - u_star.dim()]
        r_b = r.expand(*lead, *r.shape).contiguous()
        tangent = torch.func.jvp(lambda q: net.drive(q, x), (r_b,), ((s * t).contiguous(),))[1]
        return s * tangent - t

    return jvp


def asymmetry_penalty(jvp, eps: Tensor) -> Tensor:
    """Monte-Carlo ``(||J eps||^2 - eps^T J J eps) / n`` per draw; eps (..., n) -> (...,).

    ``jvp`` maps t (..., n) to J t. Unbiased for ``1/2 ||J - J^T||_F^2 / n``."""
    j_eps = jvp(eps)
    jj_eps = jvp(j_eps)
    n = eps.shape[-1]
    return ((j_eps * j_eps).sum(-1) - (eps * jj_eps).sum(-1)) / n


def homeostasis_loss(
    net: EPNetwork,
    x: Tensor,
    u_star: Tensor,
    n_draws: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scalar homeostatic loss: the penalty averaged over the batch and ``n_draws`` eps draws.

    x (batch, d), u_star (batch, n). Differentiable w.r.t. W, b, B (u* fixed)."""
    net.check_input(x)
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    if u_star.shape != (*x.shape[:-1], net.n_units):
        raise ValueError(
            f"u_star must have shape {(*x.shape[:-1], net.n_units)}, got {tuple(u_star.shape)}"
        )
    eps = torch.randn(
        (n_draws, *u_star.shape), generator=generator, dtype=torch.float64, device="cpu"
    ).to(device=u_star.device, dtype=u_star.dtype)
    return asymmetry_penalty(whitened_jvp(net, x, u_star), eps).mean()


def homeostasis_exact(net: EPNetwork, x: Tensor, u_star: Tensor) -> Tensor:
    """``1/2 ||J - J^T||_F^2 / n`` per sample (batch,), forming J (small nets, checks)."""
    n = net.n_units
    eye = torch.eye(n, dtype=u_star.dtype, device=u_star.device)
    jvp = whitened_jvp(net, x, u_star)
    with torch.no_grad():
        # Columns J e_i for every basis vector, batched: (n, batch, n) -> J (batch, n, n).
        cols = jvp(eye[:, None, :].expand(n, *u_star.shape))
        j = cols.permute(1, 2, 0)
        return 0.5 * ((j - j.transpose(1, 2)) ** 2).sum((1, 2)) / n


def whitened_jacobian(net: EPNetwork, x: Tensor, u_star: Tensor) -> Tensor:
    """The full whitened Jacobian J (batch, n, n) (for checks on small nets)."""
    n = net.n_units
    eye = torch.eye(n, dtype=u_star.dtype, device=u_star.device)
    with torch.no_grad():
        cols = whitened_jvp(net, x, u_star)(eye[:, None, :].expand(n, *u_star.shape))
    return cols.permute(1, 2, 0)
