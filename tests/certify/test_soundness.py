"""Soundness property suite: sampled points and PGD never leave the bounds (hypothesis).

Each method's test draws 20 random networks/inputs/eps and checks 5000 sampled points per example
(2 inputs x 2500), i.e. 10^5 sampled points per method and 3 x 10^5 per run, plus PGD attacks.
"""

from __future__ import annotations

import math

import pytest
import torch
from certify_nets import CROWN_ACTS, IBP_ACTS, Residual, mlp, one_thread, pgd_escape, sample_box
from hypothesis import given, settings
from hypothesis import strategies as st

from certify import compute_bounds

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

N_EXAMPLES, N_SAMPLES = 20, 2500
COUNTS: dict[str, int] = {}


@st.composite
def problems(draw, acts: dict, residual: bool = False):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    d = draw(st.integers(1, 6))
    out = draw(st.integers(1, 4))
    names = sorted(acts)
    act = [draw(st.sampled_from(names)) for _ in range(3)]
    if residual and draw(st.booleans()):
        net = Residual(d, draw(st.integers(1, 10)), out, act[0])
    else:
        hidden = draw(st.lists(st.integers(1, 12), min_size=0, max_size=3))
        net = mlp([d, *hidden, out], act, acts, scale=draw(st.sampled_from([0.5, 1.0, 2.0])))
    net = net.to(dtype)
    x = torch.randn(2, d, generator=gen, dtype=dtype) * draw(st.sampled_from([0.5, 1.0, 3.0]))
    eps: float | torch.Tensor = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]))
    if draw(st.booleans()):
        eps = torch.rand(d, generator=gen, dtype=dtype) * 0.5
    clip = draw(st.booleans())
    return net, x, eps, clip, gen


def _check(method: str, problem) -> None:
    net, x, eps, clip, gen = problem
    x_min, x_max = (x.min() - 0.05, x.max() + 0.05) if clip else (None, None)
    kw = {"reference": "ibp" if float(x.sum()) > 0 else "symbolic"} if method == "crown" else {}
    lower, upper = compute_bounds(net, x, eps, method=method, x_min=x_min, x_max=x_max, **kw)
    e = torch.broadcast_to(torch.as_tensor(eps, dtype=x.dtype), x.shape)
    lo, hi = x - e, x + e
    if clip:
        lo, hi = lo.clamp(min=x_min), hi.clamp(max=x_max)
    tol = 1e-9 if x.dtype == torch.float64 else 1e-5
    tol_b = tol * (1 + torch.maximum(lower.abs(), upper.abs())).unsqueeze(1)
    with torch.no_grad():
        pts = sample_box(lo, hi, N_SAMPLES, gen)
        y = net(pts)
    attack = pgd_escape(net, lo, hi, lower.detach(), upper.detach(), gen=gen)
    with torch.no_grad():
        y = torch.cat([y, net(attack)], 1)
    bad = (y < lower.unsqueeze(1) - tol_b) | (y > upper.unsqueeze(1) + tol_b)
    COUNTS[method] = COUNTS.get(method, 0) + pts.shape[0] * pts.shape[1]
    assert not bad.any(), f"{int(bad.sum())} points escape the {method} bounds"
    assert (lower <= upper + tol_b[:, 0]).all()


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_sampled_points_and_pgd_stay_inside(method: str) -> None:
    table = IBP_ACTS if method == "ibp" else CROWN_ACTS

    @settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None)
    @given(problems(table, residual=method == "ibp"))
    def run(problem) -> None:
        _check(method, problem)

    before = COUNTS.get(method, 0)
    run()
    assert COUNTS[method] - before >= 10**5, "the suite must check at least 1e5 points per method"


def test_activation_relaxations_on_dense_grid() -> None:
    """Per-operator check: a dense grid over [l, u] lies between the relaxation lines."""
    from certify.bounds import activations as A

    torch.manual_seed(0)
    lo = torch.randn(4000, dtype=torch.float64) * 3
    hi = lo + torch.rand(4000, dtype=torch.float64) * 6
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    z = lo[:, None] + t[None] * (hi - lo)[:, None]
    for op in [A.ReLU(), A.LeakyReLU(0.2), A.Tanh(), A.Sigmoid()]:
        ls, lb, us, ub = op.relax(lo, hi)
        lb = torch.zeros_like(lo) if lb is None else lb
        f = op.fn(z)
        assert (f >= ls[:, None] * z + lb[:, None] - 1e-12).all(), op.name
        assert (f <= us[:, None] * z + ub[:, None] + 1e-12).all(), op.name
    for op in [A.silu(), A.mish(), A.gelu(), A.softplus(), A.elu()]:
        lo_f, hi_f = op.ibp((lo, hi))
        f = op.fn(z)
        assert (f >= lo_f[:, None] - 1e-12).all() and (f <= hi_f[:, None] + 1e-12).all(), op.name
    assert math.isfinite(float(z.sum()))
