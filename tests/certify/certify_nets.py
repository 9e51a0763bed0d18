"""Random networks and samplers shared by the certify tests."""

from __future__ import annotations

import torch
from torch import nn

CROWN_ACTS = {
    "relu": nn.ReLU,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
IBP_ACTS = {
    **CROWN_ACTS,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}


def mlp(sizes: list[int], acts: list[str], table: dict = CROWN_ACTS, scale: float = 1.0):
    """Linear layers of ``sizes`` with activation ``acts[i]`` after hidden layer i."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.mul_(scale)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(table[acts[i % len(acts)]]())
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x -> LayerNorm(x + act(W2 act(W1 x))) then a head: residual + LayerNorm (IBP only)."""

    def __init__(self, d: int, h: int, out: int, act: str) -> None:
        super().__init__()
        self.l1, self.l2, self.head = nn.Linear(d, h), nn.Linear(h, d), nn.Linear(d, out)
        self.act = IBP_ACTS[act]()
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x + self.act(self.l2(self.act(self.l1(x))))))


def sample_box(lo: torch.Tensor, hi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, n, D) points: half uniform in the box, half at random vertices."""
    B, D = lo.shape
    u = torch.rand(B, n, D, generator=gen, dtype=lo.dtype)
    u[:, n // 2 :] = u[:, n // 2 :].round()
    return lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)


def pgd_escape(f, lo, hi, lower, upper, steps: int = 10, starts: int = 16, gen=None):
    """Points (B, starts, D) found by PGD pushing outputs beyond random sides of the bounds."""
    x = sample_box(lo, hi, starts, gen).clone()
    sign = torch.randint(0, 2, (lo.shape[0], starts, lower.shape[1]), generator=gen) * 2 - 1
    sign = sign.to(lo.dtype)
    step = (hi - lo).unsqueeze(1) / 8
    for _ in range(steps):
        x.requires_grad_(True)
        y = f(x)
        target = torch.where(sign > 0, y - upper.unsqueeze(1), lower.unsqueeze(1) - y)
        (g,) = torch.autograd.grad(target.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + step * g.sign(), lo.unsqueeze(1)), hi.unsqueeze(1))
    return x.detach()


def one_thread():
    """Generator for a module-scoped fixture: run with one torch thread (shared CPUs), restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
