"""LayerNorm interval propagation (IBP only).

y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta over the last dimension. Each factor is
bounded separately: the centred value x_i - mean(x) exactly per coordinate, the variance from
the squared centred intervals, then the product of intervals. Sound, deliberately simple.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from certify.bounds.ops import Interval, Op


class LayerNormOp(Op):
    def __init__(self, m: nn.LayerNorm, name: str = "layernorm") -> None:
        if len(m.normalized_shape) != 1:
            raise NotImplementedError("LayerNorm bounds support one normalised (last) dimension")
        self.m = m
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.m(x)

    def ibp(self, b: Interval) -> Interval:
        lo, hi = b
        n = lo.shape[-1]
        # x_i - mean = (1 - 1/n) x_i - (1/n) sum_{j != i} x_j
        s_lo, s_hi = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
        c_lo = (1 - 1 / n) * lo - (s_hi - hi) / n
        c_hi = (1 - 1 / n) * hi - (s_lo - lo) / n
        sq_hi = torch.maximum(c_lo**2, c_hi**2)
        sq_lo = torch.where(
            (c_lo <= 0) & (c_hi >= 0), torch.zeros_like(c_lo), torch.minimum(c_lo**2, c_hi**2)
        )
        var_lo, var_hi = sq_lo.mean(-1, keepdim=True), sq_hi.mean(-1, keepdim=True)
        inv_lo = torch.rsqrt(var_hi + self.m.eps)
        inv_hi = torch.rsqrt(var_lo + self.m.eps)
        cands = torch.stack([c_lo * inv_lo, c_lo * inv_hi, c_hi * inv_lo, c_hi * inv_hi])
        y_lo, y_hi = cands.min(0).values, cands.max(0).values
        if self.m.weight is not None:
            g = self.m.weight
            y_lo, y_hi = torch.minimum(y_lo * g, y_hi * g), torch.maximum(y_lo * g, y_hi * g)
        if self.m.bias is not None:
            y_lo, y_hi = y_lo + self.m.bias, y_hi + self.m.bias
        return y_lo, y_hi
