"""Exactness: CROWN is exact on linear networks; on tiny ReLU nets every method contains the exact
extrema from a MILP (scipy.optimize.milp, big-M with IBP pre-activation bounds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from certify_nets import mlp, one_thread
from scipy.optimize import Bounds, LinearConstraint, milp

from certify import compute_bounds

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.mark.parametrize("seed", range(5))
def test_crown_exact_on_linear_networks(seed: int) -> None:
    torch.manual_seed(seed)
    net = mlp([4, 7, 5, 3], ["identity"]).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    eps = torch.rand(4, dtype=torch.float64)
    W = torch.eye(4, dtype=torch.float64)
    b = torch.zeros(4, dtype=torch.float64)
    for m in net:
        if isinstance(m, torch.nn.Linear):
            W, b = m.weight @ W, m.weight @ b + m.bias
    centre, radius = x @ W.T + b, eps @ W.abs().T
    for method in ["crown", "crown-ibp"]:
        lo, hi = compute_bounds(net, x, eps, method=method)
        torch.testing.assert_close(lo, centre - radius, atol=1e-10, rtol=0)
        torch.testing.assert_close(hi, centre + radius, atol=1e-10, rtol=0)


def _milp_extrema(net: torch.nn.Sequential, x0: np.ndarray, eps: float) -> tuple[np.ndarray, ...]:
    """Exact min/max of every output over the l_inf ball via MILP (big-M from IBP bounds)."""
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    Ws = [m.weight.detach().double().numpy() for m in lins]
    bs = [m.bias.detach().double().numpy() for m in lins]
    # IBP pre-activation bounds for big-M
    lo, hi = x0 - eps, x0 + eps
    pre = []
    for W, b in zip(Ws, bs, strict=True):
        c, r = (lo + hi) / 2, (hi - lo) / 2
        zl, zu = W @ c + b - np.abs(W) @ r, W @ c + b + np.abs(W) @ r
        pre.append((zl, zu))
        lo, hi = np.maximum(zl, 0), np.maximum(zu, 0)
    # variable layout: x | for each hidden layer: a (post), d (binary)
    d = len(x0)
    sizes = [W.shape[0] for W in Ws[:-1]]
    n_var = d + 2 * sum(sizes)
    rows, lbs, ubs = [], [], []
    var_lo = list(x0 - eps) + []
    var_hi = list(x0 + eps) + []
    integrality = [0] * d
    prev = np.arange(d)
    off = d
    for k, n in enumerate(sizes):
        W, b = Ws[k], bs[k]
        zl, zu = pre[k]
        a_idx, d_idx = np.arange(off, off + n), np.arange(off + n, off + 2 * n)
        off += 2 * n
        var_lo += [0.0] * n + [0.0] * n
        var_hi += list(np.maximum(zu, 0)) + [1.0] * n
        integrality += [0] * n + [1] * n
        for i in range(n):
            z = np.zeros(n_var)
            z[prev] = W[i]
            # a >= z  ->  a - z >= b
            r1 = -z.copy()
            r1[a_idx[i]] += 1
            rows.append(r1), lbs.append(b[i]), ubs.append(np.inf)
            # a <= z - zl (1 - d)  ->  a - z - zl d <= b - zl
            r2 = -z.copy()
            r2[a_idx[i]] += 1
            r2[d_idx[i]] -= zl[i]
            rows.append(r2), lbs.append(-np.inf), ubs.append(b[i] - zl[i])
            # a <= zu d
            r3 = np.zeros(n_var)
            r3[a_idx[i]], r3[d_idx[i]] = 1, -max(zu[i], 0)
            rows.append(r3), lbs.append(-np.inf), ubs.append(0.0)
        prev = a_idx
    cons = LinearConstraint(np.array(rows), lbs, ubs)
    bounds = Bounds(var_lo, var_hi)
    W, b = Ws[-1], bs[-1]
    mins, maxs = [], []
    for j in range(W.shape[0]):
        c = np.zeros(n_var)
        c[prev] = W[j]
        for sign, store in ((1, mins), (-1, maxs)):
            res = milp(sign * c, constraints=cons, bounds=bounds, integrality=integrality)
            assert res.success, res.message
            store.append(sign * res.fun + b[j])
    return np.array(mins), np.array(maxs)


def test_tiny_relu_nets_contain_milp_extrema() -> None:
    looseness = {m: [] for m in ["ibp", "crown-ibp", "crown"]}
    for seed in range(6):
        torch.manual_seed(seed)
        net = mlp([3, 6, 6, 2], ["relu"]).double()
        x0 = torch.randn(1, 3, dtype=torch.float64)
        eps = 0.3
        mn, mx = _milp_extrema(net, x0[0].numpy(), eps)
        for method in looseness:
            lo, hi = compute_bounds(net, x0, eps, method=method)
            lo, hi = lo[0].detach().numpy(), hi[0].detach().numpy()
            assert (lo <= mn + 1e-7).all() and (hi >= mx - 1e-7).all(), method
            looseness[method].append(float(np.mean((hi - lo) / np.maximum(mx - mn, 1e-12))))
    ratio = {m: float(np.mean(v)) for m, v in looseness.items()}
    print("bound width / exact range (mean over 6 nets x 2 outputs):", ratio)
    assert ratio["crown"] <= ratio["ibp"]
