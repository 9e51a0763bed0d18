"""Layered recurrent network for generalised equilibrium propagation (EP).

Dynamics (Laborieux & Zenke, "Holomorphic EP computes exact gradients through finite size
oscillations", NeurIPS 2022; "Improving EP without weight symmetry through Jacobian
homeostasis", ICLR 2024):

    u <- u + F_beta(u),     F_beta(u) = H(rho(u), x) - u - beta * dl/dr        (dynamics)

where ``u = [u_1, ..., u_L]`` are the states of the L dynamical layers, ``r = rho(u)`` their
rates and ``H`` the drive: layer ``l`` receives forward weights ``W_l`` (with bias) from the layer
below (``r_0 = x``) and feedback weights ``B_l`` (no bias) from the layer above,

    H_l(r, x) = W_l r_{l-1} + b_l + B_l r_{l+1}        (B_L = 0 for the output layer).

With ``B_l = W_{l+1}^T`` the drive is the gradient of an energy and the system is classic EP.
The nudge ``-beta * dl/dr`` acts on the output layer only, with ``l`` the loss of a dense readout
applied to ``rho(u_L)``; the readout itself is trained by its direct gradient at the fixed point.
The initial asymmetry is set by an angle (ICLR 2024, Sec. 5): ``B <- sin(a) B0 + cos(a) W^T``.

Everything is batched over samples and over any number of leading dimensions (used to run the
N nudged phases of the holomorphic estimator side by side) and works on real or complex tensors
(complex nudges need holomorphic activations, see :data:`ACTIVATIONS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saferl.common.runtime import resolve_device

# ----------------------------------------------------------------------------------------------
# Activations. ``holomorphic`` marks the ones that are complex-analytic, which the N >= 2 Cauchy
# estimator requires (NeurIPS 2022, Sec. 3).
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """An elementwise rate function ``rho`` and whether it is holomorphic."""

    name: str
    fn: Callable[[Tensor], Tensor]
    holomorphic: bool


def _sigmoid(z: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-z))


ACTIVATIONS: dict[str, Activation] = {
    # sigma(4z - 2): the MLP activation of the reference (ICLR 2024).
    "sigmoid4": Activation("sigmoid4", lambda z: _sigmoid(4.0 * z - 2.0), True),
    # 0.5 z sigma(z) + (1 - 0.5 z) sigma(z - 2): the holomorphic activation for CNNs (NeurIPS 2022).
    "holo_sigmoid": Activation(
        "holo_sigmoid", lambda z: 0.5 * z * _sigmoid(z) + (1.0 - 0.5 * z) * _sigmoid(z - 2.0), True
    ),
    "tanh": Activation("tanh", torch.tanh, True),
    # Not holomorphic: fine for N in {0, 1}, rejected for N >= 2.
    "hard_sigmoid": Activation("hard_sigmoid", lambda z: torch.clamp(z, 0.0, 1.0), False),
    "relu": Activation("relu", torch.relu, False),
}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; KeyError listing the known names otherwise."""
    if name not in ACTIVATIONS:
        raise KeyError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@dataclass
class EPNetConfig:
    """Architecture of the recurrent network (reference: 784-256-256-10, sigma(4z-2))."""

    in_dim: int = 784
    """Input dimension."""
    hidden: tuple[int, ...] = (256, 256)
    """Sizes of the hidden dynamical layers."""
    n_classes: int = 10
    """Size of the output dynamical layer and of the readout."""
    activation: str = "sigmoid4"
    """Rate function rho, a key of ``ACTIVATIONS``."""
    angle_deg: float = 90.0
    """Initial asymmetry angle a: B = sin(a) B0 + cos(a) W^T (0 = aligned, 90 = random)."""
    loss: str = "xent"
    """Readout loss: "xent" (softmax cross-entropy) or "mse" (half squared error on logits)."""
    dtype: str = "float32"
    """Parameter dtype, "float32" or "float64"."""
    layer_sizes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.in_dim < 1 or self.n_classes < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(
                f"layer sizes must be positive; got in_dim={self.in_dim}, "
                f"hidden={self.hidden}, n_classes={self.n_classes}"
            )
        if not math.isfinite(self.angle_deg):
            raise ValueError(f"angle_deg must be finite, got {self.angle_deg}")
        if self.loss not in ("xent", "mse"):
            raise ValueError(f"loss must be 'xent' or 'mse', got {self.loss!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        get_activation(self.activation)
        self.layer_sizes = (*self.hidden, self.n_classes)


@dataclass
class RelaxStats:
    """Per-sample diagnostics of a relaxation (all shape (batch,))."""

    residual: Tensor
    """||F(u_T)||_2 at the last state (the fixed-point residual)."""
    converged: Tensor
    """residual <= tol."""
    oscillating: Tensor
    """Not converged and ||u_T - u_{T-2}|| < 0.1 ||u_T - u_{T-1}|| (a period-2 cycle)."""

    def summary(self) -> dict[str, float]:
        """Scalars for logs: log10 residual median / max, counts of bad samples."""
        log_res = torch.log10(self.residual.clamp_min(1e-30)).double()
        return {
            "log10_residual_median": float(log_res.median()),
            "log10_residual_max": float(log_res.max()),
            "n_not_converged": int((~self.converged).sum()),
            "n_oscillating": int(self.oscillating.sum()),
            "n_samples": int(self.residual.numel()),
        }


class EPNetwork(nn.Module):
    """Layered recurrent network with forward ``W`` (+bias), feedback ``B`` and a dense readout.

    Args:
        config: the architecture; ``config.angle_deg`` sets the initial asymmetry.
        device: where the parameters live (default: cuda if available, else cpu).
        seed: seeds the initialisation (a private generator; the global RNG is untouched).
    """

    def __init__(
        self, config: EPNetConfig, device: str | torch.device | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        self.act = get_activation(config.activation)
        dev = resolve_device(device)
        dtype = getattr(torch, config.dtype)
        gen = torch.Generator().manual_seed(seed)
        sizes = (config.in_dim, *config.layer_sizes)
        self.W = nn.ParameterList()
        self.b = nn.ParameterList()
        self.B = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.W.append(nn.Parameter(_uniform((fan_out, fan_in), bound, gen, dtype)))
            self.b.append(nn.Parameter(_uniform((fan_out,), bound, gen, dtype)))
        a = math.radians(config.angle_deg)
        for l in range(len(config.layer_sizes) - 1):
            w_next = self.W[l + 1].detach()  # (n_{l+1}, n_l)
            b0 = _uniform(tuple(w_next.T.shape), 1.0 / math.sqrt(w_next.shape[1]), gen, dtype)
            self.B.append(nn.Parameter(math.sin(a) * b0 + math.cos(a) * w_next.T.clone()))
        bound = 1.0 / math.sqrt(config.n_classes)
        self.R = nn.Parameter(_uniform((config.n_classes, config.n_classes), bound, gen, dtype))
        self.c = nn.Parameter(_uniform((config.n_classes,), bound, gen, dtype))
        self.to(dev)

    # ------------------------------------------------------------------ structure
    @property
    def n_units(self) -> int:
        """Number of dynamical units n (state dimension)."""
        return sum(self.config.layer_sizes)

    def dynamics_parameters(self) -> list[nn.Parameter]:
        """The parameters trained by EP (W, b, B); the readout is trained directly."""
        return [*self.W, *self.b, *self.B]

    def readout_parameters(self) -> list[nn.Parameter]:
        """The readout (R, c)."""
        return [self.R, self.c]

    def split(self, u: Tensor) -> list[Tensor]:
        """Split a state ``(..., n)`` into the layers ``[(..., n_1), ..., (..., n_L)]``."""
        return list(torch.split(u, list(self.config.layer_sizes), dim=-1))

    def rho(self, u: Tensor) -> Tensor:
        """Rates ``rho(u)``, elementwise, same shape as ``u``."""
        return self.act.fn(u)

    def rho_prime(self, u: Tensor) -> Tensor:
        """``rho'(u)`` elementwise (by forward-mode AD), same shape as ``u``."""
        return torch.func.jvp(self.rho, (u,), (torch.ones_like(u),))[1]

    # ------------------------------------------------------------------ dynamics
    def drive(self, r: Tensor, x: Tensor) -> Tensor:
        """``H(r, x)``: per layer W_l r_{l-1} + b_l + B_l r_{l+1}; (..., n) -> (..., n)."""
        rs = self.split(r)
        out = []
        for l, (w, b) in enumerate(zip(self.W, self.b, strict=True)):
            below = x if l == 0 else rs[l - 1]
            h = _times_transpose(below, w.to(r.dtype)) + b.to(r.dtype)
            if l < len(self.B):
                h = h + _times_transpose(rs[l + 1], self.B[l].to(r.dtype))
            out.append(h)
        return torch.cat(out, dim=-1)

    def logits(self, r_out: Tensor) -> Tensor:
        """Readout logits ``R r_out + c``; (..., n_classes) -> (..., n_classes)."""
        return _times_transpose(r_out, self.R.to(r_out.dtype)) + self.c.to(r_out.dtype)

    def loss(self, u: Tensor, y: Tensor) -> Tensor:
        """Per-sample readout loss l(rho(u_L)); u (..., n), y (...,) int labels -> (...,)."""
        z = self.logits(self.rho(self.split(u)[-1]))
        onehot = nn.functional.one_hot(y, self.config.n_classes).to(z.dtype)
        if self.config.loss == "mse":
            return 0.5 * ((z - onehot) ** 2).sum(-1)
        return -(onehot * torch.log_softmax(z, dim=-1)).sum(-1)

    def loss_grad_rates(self, u: Tensor, y: Tensor) -> Tensor:
        """``dl/dr`` as a full state vector (zero on hidden layers), holomorphic in ``u``.

        Shapes: u (..., n) real or complex, y (...,) -> (..., n)."""
        parts = self.split(u)
        z = self.logits(self.rho(parts[-1]))
        onehot = nn.functional.one_hot(y, self.config.n_classes).to(z.dtype)
        if self.config.loss == "mse":
            dz = z - onehot
        else:
            # softmax written as exp(z - m) / sum: holomorphic; m (a constant shift) for range only.
            m = z.real.amax(dim=-1, keepdim=True).detach()
            e = torch.exp(z - m)
            dz = e / e.sum(-1, keepdim=True) - onehot
        g_out = dz @ self.R.to(z.dtype)
        zeros = [torch.zeros_like(p) for p in parts[:-1]]
        return torch.cat([*zeros, g_out], dim=-1)

    def vector_field(
        self, u: Tensor, x: Tensor, beta: Tensor | float = 0.0, y: Tensor | None = None
    ) -> Tensor:
        """``F_beta(u) = H(rho(u), x) - u - beta dl/dr``; u (..., n), x (..., d) -> (..., n).

        ``beta`` is a scalar or broadcastable tensor (e.g. (K, 1, 1) for K nudges)."""
        f = self.drive(self.rho(u), x) - u
        if y is None:
            return f
        return f - beta * self.loss_grad_rates(u, y)

    def relax(
        self,
        u0: Tensor,
        x: Tensor,
        steps: int,
        beta: Tensor | float = 0.0,
        y: Tensor | None = None,
    ) -> Tensor:
        """``steps`` iterations of ``u <- u + F_beta(u)`` from ``u0``; returns ``u_T`` (..., n)."""
        u = u0
        for _ in range(steps):
            u = u + self.vector_field(u, x, beta, y)
        return u

    @torch.no_grad()
    def free_phase(
        self, x: Tensor, steps: int = 150, tol: float = 1e-3
    ) -> tuple[Tensor, RelaxStats]:
        """Free relaxation from u = 0 for ``steps`` steps; x (batch, d) -> (u* (batch, n), stats).

        Non-converged (residual > tol) and period-2 oscillating samples are counted, not hidden."""
        self.check_input(x)
        if steps < 2:
            raise ValueError(f"free phase needs at least 2 steps, got {steps}")
        u_prev2 = torch.zeros(*x.shape[:-1], self.n_units, dtype=x.dtype, device=x.device)
        u_prev = u_prev2 + self.vector_field(u_prev2, x)
        u = u_prev + self.vector_field(u_prev, x)
        for _ in range(steps - 2):
            u_prev2, u_prev = u_prev, u
            u = u + self.vector_field(u, x)
        residual = self.vector_field(u, x).norm(dim=-1)
        converged = residual <= tol
        step1 = (u - u_prev).norm(dim=-1)
        step2 = (u - u_prev2).norm(dim=-1)
        oscillating = (~converged) & (step2 < 0.1 * step1)
        return u, RelaxStats(residual, converged, oscillating)

    def check_input(self, x: Tensor, y: Tensor | None = None) -> None:
        """Raise ValueError/TypeError on wrong shape, dtype, NaN or out-of-range labels."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.shape[-1] != self.config.in_dim or x.dim() < 2:
            raise ValueError(
                f"x must have shape (batch, {self.config.in_dim}), got {tuple(x.shape)}"
            )
        if x.dtype != self.W[0].dtype:
            raise TypeError(f"x must have dtype {self.W[0].dtype}, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or inf")
        if y is not None:
            if y.shape != x.shape[:-1] or y.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"y must be integer labels of shape {tuple(x.shape[:-1])}, "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.config.n_classes):
                raise ValueError(
                    f"labels must lie in [0, {self.config.n_classes}), got {y.unique()}"
                )


def _times_transpose(a: Tensor, w: Tensor) -> Tensor:
    """``a @ w.T`` for a (..., k), w (m, k) -> (..., m), as one 2-D matmul (batched 3-D matmuls
    against a transposed weight hit a slow CPU path)."""
    lead = a.shape[:-1]
    return (a.reshape(-1, a.shape[-1]).contiguous() @ w.T).reshape(*lead, w.shape[0])


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator, dtype) -> Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype)
