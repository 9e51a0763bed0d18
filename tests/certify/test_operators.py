"""Operators of the bound engine, one by one: sampled points (corners included) stay inside the
IBP and CROWN bounds over random shapes and radii (hypothesis); CROWN is at least as tight as IBP
on small networks built from each operator; linear operators are bounded exactly; a tiny
attention block (Linear -> q, k, v -> masked softmax(q k^T / sqrt(d)) v -> LayerNorm) is bounded
soundly end to end; unsupported operators raise naming the operator and the method; a new
operator is one registered class."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from certify_nets import one_thread, pgd_escape, sample_box
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certify import compute_bounds

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

N_POINTS = 256  # per example: half uniform, half corners of the input box
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)


def _box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x - eps, x + eps


def check(net: nn.Module, x: torch.Tensor, eps: float, gen: torch.Generator, attack=False):
    """Sampled outputs (and PGD points with ``attack``) inside every method's bounds; returns
    the mean widths by method."""
    lo_x, hi_x = _box(x, eps)
    B = x.shape[0]

    def f(p: torch.Tensor) -> torch.Tensor:  # (B, n, D) points -> (B, n, outputs)
        return net(p.reshape(-1, *x.shape[1:])).reshape(B, p.shape[1], -1)

    with torch.no_grad():
        pts = sample_box(lo_x.flatten(1), hi_x.flatten(1), N_POINTS, gen)
        y = torch.cat([f(pts), net(x).unsqueeze(1)], 1)
    widths = {}
    for method in ("ibp", "crown", "crown-ibp"):
        with torch.no_grad():
            lo, hi = compute_bounds(net, x, eps, method=method)
        assert torch.isfinite(lo).all() and torch.isfinite(hi).all(), method
        if attack:
            adv = pgd_escape(f, lo_x.flatten(1), hi_x.flatten(1), lo, hi, gen=gen)
            with torch.no_grad():
                y = torch.cat([y, f(adv)], 1)
        tol = (1e-9 if x.dtype == torch.float64 else 1e-5) * (1 + torch.maximum(lo.abs(), hi.abs()))
        bad = (y < (lo - tol).unsqueeze(1)) | (y > (hi + tol).unsqueeze(1))
        assert not bad.any(), f"{int(bad.sum())} sampled outputs escape the {method} bounds"
        widths[method] = float((hi - lo).mean())
    if "crown" in widths:
        assert widths["crown"] <= widths["ibp"] * (1 + 1e-9) + 1e-12, widths
    return widths


@st.composite
def problems(draw, dims=(1, 6), max_eps=0.5):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = draw(st.integers(*dims))
    B = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    x = torch.randn(B, d, generator=gen, dtype=dtype)
    eps = draw(st.sampled_from([0.0, 0.01, 0.1, max_eps]))
    return seed, d, x, eps, gen


class Net(nn.Module):
    """``x -> head(body(in_a(x), in_b(x)))`` with ``in_*`` linear maps reshaped to ``shape``."""

    def __init__(self, d: int, shape: tuple[int, ...], body, out: int = 3, shape_b=None) -> None:
        super().__init__()
        self.shape, self.shape_b = shape, shape_b or shape
        self.in_a = nn.Linear(d, math.prod(self.shape))
        self.in_b = nn.Linear(d, math.prod(self.shape_b))
        self.body = body
        with torch.no_grad():
            y = body(torch.zeros(1, *self.shape), torch.zeros(1, *self.shape_b))
        self.head = nn.Linear(y[0].numel(), out)

    def forward(self, x):
        a = self.in_a(x).view(x.shape[0], *self.shape)
        b = self.in_b(x).view(x.shape[0], *self.shape_b)
        return self.head(self.body(a, b).flatten(1))


def _net(d, shape, body, shape_b=None, dtype=torch.float64) -> nn.Module:
    return Net(d, shape, body, shape_b=shape_b).to(dtype)


# ----------------------------------------------------------------- products of bounded tensors

PRODUCTS = {
    "mul": (lambda a, b: a * b, None),
    "mul_broadcast": (lambda a, b: a * b, "col"),
    "matmul": (lambda a, b: a @ b.transpose(-2, -1), None),
    "bmm": (lambda a, b: torch.bmm(a, b.transpose(1, 2)), None),
    "einsum": (lambda a, b: torch.einsum("btd,bsd->bts", a, b), None),
    "einsum_gram": (lambda a, b: torch.einsum("btd,bte->bde", a, b), None),
    "square": (lambda a, b: a * a + b, None),
}


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_products_of_bounded_tensors(name: str) -> None:
    body, kind = PRODUCTS[name]

    @SETTINGS
    @given(problems(), st.integers(1, 3), st.integers(1, 3))
    def run(problem, T, k) -> None:
        _, d, x, eps, gen = problem
        shape_b = (T, 1) if kind == "col" else None
        check(_net(d, (T, k), body, shape_b, x.dtype), x, eps, gen)

    run()


def test_division_by_a_bounded_positive_quantity() -> None:
    def body(a, b):
        return a / (F.softplus(b) + 0.5)

    @SETTINGS
    @given(problems(), st.integers(1, 4))
    def run(problem, k) -> None:
        _, d, x, eps, gen = problem
        check(_net(d, (k,), body, dtype=x.dtype), x, eps, gen)

    run()
    net = _net(3, (2,), lambda a, b: a / b)  # b's lower bound is not > 0
    with pytest.raises(ValueError, match=r"operator.truediv.*> 0"):
        compute_bounds(net, torch.zeros(1, 3, dtype=torch.float64), 1.0, method="crown")


# ----------------------------------------------------------------- softmax with a padding mask


@SETTINGS
@given(problems(max_eps=1.0), st.integers(1, 4), st.booleans())
def test_masked_softmax(problem, T, additive) -> None:
    seed, d, x, eps, gen = problem
    mask = torch.rand(T, T, generator=gen) < 0.4
    mask[:, 0] = False  # every row keeps an entry
    mask[-1] = True  # a padded query row: all its outputs are 0 ... except
    mask[-1, 0] = False if T == 1 else True
    if T > 1:
        mask[-1, 1:] = True
        mask[-1, 0] = False

    def body(a, b):
        s = a * 3
        if additive:
            s = s + torch.zeros(T, T, dtype=s.dtype).masked_fill(mask, float("-inf"))
        else:
            s = s.masked_fill(mask, float("-inf"))
        return torch.softmax(s, dim=-1)

    net = _net(d, (T, T), body, dtype=x.dtype)
    check(net, x, eps, gen)
    net.head = nn.Identity()
    for method in ["ibp", "crown"]:
        lo, hi = compute_bounds(net, x, eps, method=method)
        lo, hi = lo.reshape(-1, T, T), hi.reshape(-1, T, T)
        assert (lo[:, mask] == 0).all() and (hi[:, mask] == 0).all(), method


def test_softmax_over_a_middle_dimension() -> None:
    gen = torch.Generator().manual_seed(0)
    net = _net(4, (3, 2), lambda a, b: F.softmax(a + b, dim=1))
    check(net, torch.randn(2, 4, generator=gen, dtype=torch.float64), 0.2, gen)


# ----------------------------------------------------------------- LayerNorm and activations


class LayerNormBody(nn.Module):
    def __init__(self, n: int, functional: bool, affine: bool) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(n, elementwise_affine=affine)
        self.n, self.functional = n, functional

    def forward(self, a, b):
        if self.functional:
            return F.layer_norm(a, (self.n,), self.ln.weight, self.ln.bias, 1e-5)
        return self.ln(a)


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 40),
    st.sampled_from([1e-3, 0.1, 1.0, 10.0]),
    st.sampled_from([0.0, 1e-4, 1e-2, 1.0]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_layernorm_variance_bounds_hold(seed, n, spread, radius, dtype) -> None:
    """The variance bounds (per-coordinate squares met with the centre-and-radius bounds of
    ||x - mean||) contain the variance of sampled points and corners of the box."""
    from certify.bounds.normalization import LayerNormOp

    gen = torch.Generator().manual_seed(seed)
    centre = spread * torch.randn(3, n, generator=gen, dtype=dtype)
    r = radius * torch.rand(3, n, generator=gen, dtype=dtype)
    op = LayerNormOp(n, None, None, 1e-5)
    _, (v_lo, v_hi), _ = op._pieces((centre - r, centre + r))
    pts = sample_box(centre - r, centre + r, N_POINTS, gen)  # (3, N, n)
    v = pts.var(-1, unbiased=False) + 1e-5
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (v >= v_lo * (1 - tol)).all() and (v <= v_hi * (1 + tol)).all()


def test_layernorm_variance_bound_is_exact_where_squares_alone_are_not() -> None:
    """x in c +- 1 with c = (3, -3, 3, -3, ...): the smallest variance is 4 (every |x_i| = 2).
    Centring couples the coordinates (each x_i - mean has radius 1.75), so the squares alone
    give (3 - 1.75)^2 = 1.5625; the norm bound ||c|| - ||r|| gives the exact 4."""
    from certify.bounds.normalization import LayerNormOp

    c = torch.tensor([[3.0, -3.0] * 4], dtype=torch.float64)
    op = LayerNormOp(8, None, None, 0.0)
    _, (v_lo, v_hi), _ = op._pieces((c - 1, c + 1))
    assert float(v_lo) == pytest.approx(4.0, rel=1e-4)
    assert float(v_hi) == pytest.approx(16.0, rel=1e-4)  # (||c|| + ||r||)^2 / n, also exact


@SETTINGS
@given(problems(), st.integers(2, 5), st.booleans(), st.booleans())
def test_layernorm_with_affine(problem, n, functional, affine) -> None:
    _, d, x, eps, gen = problem
    body = LayerNormBody(n, functional, affine)
    if affine:
        with torch.no_grad():
            body.ln.weight.normal_(generator=gen)
            body.ln.bias.normal_(generator=gen)
    check(_net(d, (2, n), body, dtype=x.dtype), x, eps, gen)


ACTIVATIONS = {
    "silu": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "exp": torch.exp,
    "softplus": F.softplus,
    "elu": F.elu,
    "square": torch.square,
    "sqrt": lambda a: torch.sqrt(F.softplus(a)),
    "rsqrt": lambda a: torch.rsqrt(F.softplus(a) + 0.1),
    "reciprocal": lambda a: 1.0 / (torch.exp(a) + 0.2),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_elementwise_activations(name: str) -> None:
    f = ACTIVATIONS[name]

    @SETTINGS
    @given(problems(max_eps=1.0), st.integers(1, 6), st.sampled_from([0.5, 2.0]))
    def run(problem, k, scale) -> None:
        _, d, x, eps, gen = problem
        net = _net(d, (k,), lambda a, b: f(scale * a) + b, dtype=x.dtype)
        check(net, x, eps, gen)

    run()


def test_relaxations_hold_on_a_dense_grid() -> None:
    """Per-operator check on [l, u] (float64 and float32): f between the relaxation lines."""
    from certify.bounds import activations as A

    ops = [A.silu(), A.mish(), A.gelu(), A.gelu("tanh"), A.Exp(), A.Square(), A.softplus()]
    ops += [A.elu(), A.elu(0.3), A.Tanh(), A.Sigmoid()]
    for dtype in (torch.float64, torch.float32):
        gen = torch.Generator().manual_seed(1)
        lo = torch.randn(3000, generator=gen, dtype=dtype) * 4
        hi = lo + torch.rand(3000, generator=gen, dtype=dtype) * torch.tensor([0.0, 1e-4, 8])[
            torch.randint(0, 3, (3000,), generator=gen)
        ].to(dtype)
        t = torch.linspace(0, 1, 301, dtype=dtype)
        z = lo[:, None] + t[None] * (hi - lo)[:, None]
        for op in ops:
            ls, lb, us, ub = op.relax(lo, hi)
            f = op.fn(z.double())
            low = ls.double()[:, None] * z.double() + lb.double()[:, None]
            up = us.double()[:, None] * z.double() + ub.double()[:, None]
            assert (f >= low - 1e-12 * (1 + f.abs())).all(), (op, dtype)
            assert (f <= up + 1e-12 * (1 + f.abs())).all(), (op, dtype)
        pos_lo = lo.abs() + 0.05
        pos_z = pos_lo[:, None] + t[None] * (hi - lo)[:, None]
        for op in [A.Reciprocal(), A.Rsqrt(), A.Sqrt()]:
            ls, lb, us, ub = op.relax(pos_lo, pos_lo + (hi - lo))
            f = op.fn(pos_z.double())
            low = ls.double()[:, None] * pos_z.double() + lb.double()[:, None]
            up = us.double()[:, None] * pos_z.double() + ub.double()[:, None]
            assert (f >= low - 1e-12 * (1 + f.abs())).all(), (op, dtype)
            assert (f <= up + 1e-12 * (1 + f.abs())).all(), (op, dtype)


# ----------------------------------------------------------------- shape operators: exact

IDX = torch.tensor([2, 0, 2])
SHAPE_OPS = {
    "reshape": lambda a, b: a.reshape(a.shape[0], -1, 2) + b.view(b.shape[0], -1, 2),
    "transpose": lambda a, b: a.transpose(1, 2) - b.permute(0, 2, 1),
    "cat": lambda a, b: torch.cat([a, b], dim=-1),
    "stack": lambda a, b: torch.stack([a, b], dim=1),
    "index": lambda a, b: a[:, 1:, ::2] * 2.0 + b[:, :-1, ::2],
    "gather": lambda a, b: torch.index_select(a, 2, IDX) + b[:, :, IDX],
    "take_along_dim": lambda a, b: torch.take_along_dim(a, IDX.view(1, 1, 3), dim=2),
    "unsqueeze_squeeze": lambda a, b: a.unsqueeze(1).squeeze(1) - 3 * b.unsqueeze(-1).sum(-1),
    "sum_mean": lambda a, b: a.sum(dim=1) + b.mean(dim=(1, 2), keepdim=True).squeeze(1),
    "mask_mul": lambda a, b: a * torch.tensor([1.0, 0.0, 1.0], dtype=a.dtype) - b / 4,
    "mask_where": lambda a, b: torch.where(torch.tensor([True, False, True]), a, b + 1),
    "masked_fill": lambda a, b: a.masked_fill(torch.tensor([[True], [False]]), 0.5),
    "expand_flip": lambda a, b: a[:, :1].expand(-1, 2, -1).flip(-1) + b,
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_operators_are_exact(name: str) -> None:
    """Linear networks built from a shape operator: CROWN is exact (the box of a linear map) and
    every sample lies inside."""
    body = SHAPE_OPS[name]

    @settings(max_examples=6, deadline=None, derandomize=True, database=None)
    @given(problems())
    def run(problem) -> None:
        _, d, x, eps, gen = problem
        net = _net(d, (2, 3), body, dtype=x.dtype)
        check(net, x, eps, gen)
        J = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0))[0], x[0])
        centre = net(x)
        radius = eps * J.abs().sum(-1)
        for method in ["crown", "crown-ibp"]:
            with torch.no_grad():
                lo, hi = compute_bounds(net, x, eps, method=method)
            tol = 1e-9 if x.dtype == torch.float64 else 1e-4
            torch.testing.assert_close(lo, centre - radius, atol=tol, rtol=0)
            torch.testing.assert_close(hi, centre + radius, atol=tol, rtol=0)

    run()


# ----------------------------------------------------------------- a tiny attention block


class TinyAttention(nn.Module):
    """Linear -> tokens -> q, k, v -> masked softmax(q k^T / sqrt(d)) v -> residual + LayerNorm
    -> head. Pure torch, written as one would write it."""

    def __init__(self, obs: int, tokens: int, d: int, out: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.tokens, self.d = tokens, d
        self.embed = nn.Linear(obs, tokens * d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(tokens * d, out)
        self.register_buffer("mask", mask)  # True: padding key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).view(x.shape[0], self.tokens, self.d)
        q, k, v = self.q(h), self.k(h), self.v(h)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d)
        scores = scores.masked_fill(self.mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        y = self.norm(h + weights @ v)
        return self.head(y.flatten(1))


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(problems(dims=(2, 5), max_eps=0.1), st.integers(2, 4), st.integers(2, 4))
def test_tiny_attention_block_is_bounded_soundly(problem, tokens, d) -> None:
    _, obs, x, eps, gen = problem
    mask = torch.zeros(tokens, dtype=torch.bool)
    mask[-1] = True  # the last token is padding: no query attends to it
    net = TinyAttention(obs, tokens, d, 2, mask).to(x.dtype)
    widths = check(net, x, eps, gen, attack=True)
    assert widths["crown"] <= widths["ibp"] + 1e-12


def test_attention_fast_and_dense_paths_agree() -> None:
    """The unstable-only (fast) and full (dense) backward rows give the same bounds on a graph
    with branches, products, a masked softmax and LayerNorm."""
    torch.manual_seed(3)
    net = TinyAttention(4, 3, 3, 2, torch.tensor([False, False, True])).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    C = torch.randn(5, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        fast = compute_bounds(net, x, 0.05, method="crown", C=C, fast=True)
        dense = compute_bounds(net, x, 0.05, method="crown", C=C, fast=False)
    torch.testing.assert_close(fast, dense, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_attention_bounds_are_differentiable(method: str) -> None:
    """Certified training needs gradients of the bounds: finite for every parameter, and the
    autograd path gives the no-grad path's bounds."""
    torch.manual_seed(1)
    net = TinyAttention(4, 3, 2, 2, torch.tensor([False, True, False]))
    x = torch.randn(3, 4)
    lo, hi = compute_bounds(net, x, 0.05, method=method)
    (hi - lo).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        lo2, hi2 = compute_bounds(net, x, 0.05, method=method)
    torch.testing.assert_close((lo.detach(), hi.detach()), (lo2, hi2))


def test_attention_weights_on_padding_are_exactly_zero() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([False, False, True])
    net = TinyAttention(3, 3, 2, 2, mask).double()

    class Weights(nn.Module):
        def __init__(self, block: TinyAttention) -> None:
            super().__init__()
            self.b = block

        def forward(self, x):
            b = self.b
            h = b.embed(x).view(x.shape[0], b.tokens, b.d)
            s = (b.q(h) @ b.k(h).transpose(-2, -1)).masked_fill(b.mask, float("-inf"))
            return torch.softmax(s, dim=-1).flatten(1)

    x = torch.randn(2, 3, dtype=torch.float64)
    for method in ["ibp", "crown", "crown-ibp"]:
        lo, hi = compute_bounds(Weights(net), x, 0.3, method=method)
        pad = torch.arange(9) % 3 == 2
        assert (lo[:, pad] == 0).all() and (hi[:, pad] == 0).all()
        assert (lo[:, ~pad] > 0).all()


# ----------------------------------------------------------------- errors and extension


def test_unsupported_operators_raise_naming_operator_and_method() -> None:
    class Sort(nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=-1).values

    with pytest.raises(NotImplementedError, match=r"certify: unsupported operation torch.sort"):
        compute_bounds(Sort(), torch.randn(2, 3), 0.1, method="ibp")

    class Max(nn.Module):
        def forward(self, x):
            return torch.amax(x, dim=-1, keepdim=True)

    compute_bounds(Max(), torch.randn(2, 3), 0.1, method="ibp")
    for method in ["crown", "crown-ibp"]:
        with pytest.raises(NotImplementedError, match="no CROWN relaxation for torch.amax"):
            compute_bounds(Max(), torch.randn(2, 3), 0.1, method=method)

    class Cube(nn.Module):
        def forward(self, x):
            return x**3

    with pytest.raises(NotImplementedError, match=r"operator.pow.*power 3"):
        compute_bounds(Cube(), torch.randn(2, 3), 0.1)


def test_a_new_operator_is_one_registered_class() -> None:
    """arctan: increasing, convex below 0 and concave above, so the S-shaped family's relaxation
    applies; registering the class is all the engine needs."""
    from certify.bounds import register
    from certify.bounds.activations import SShaped

    @register(torch.atan, "atan")
    class Atan(SShaped):
        def fn(self, z):
            return torch.atan(z)

        def df(self, z):
            return 1 / (1 + z * z)

    gen = torch.Generator().manual_seed(0)
    net = _net(3, (4,), lambda a, b: torch.atan(3 * a) + b)
    check(net, torch.randn(2, 3, generator=gen, dtype=torch.float64), 0.3, gen)


# ----------------------------------------------------------------- the input box


def test_box_input_matches_the_ball_and_is_validated() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    eps = torch.rand(4, 3, dtype=torch.float64) * 0.3
    for method in ["ibp", "crown", "crown-ibp"]:
        ball = compute_bounds(net, x, eps, method=method)
        box = compute_bounds(net, (x - eps, x + eps), method=method)
        torch.testing.assert_close(box, ball, atol=1e-12, rtol=0)
    lo, hi = x - 0.1, x + 0.1
    lo_before = lo.clone()
    with torch.no_grad():
        compute_bounds(net, (lo, hi), method="ibp")
    assert torch.equal(lo, lo_before)  # the caller's tensors are never written
    with pytest.raises(ValueError, match="lo must be <= hi"):
        compute_bounds(net, (hi, lo), method="crown")
    with pytest.raises(ValueError, match="same shape"):
        compute_bounds(net, (lo, hi[:, :2]), method="crown")
    with pytest.raises(ValueError, match="finite"):
        compute_bounds(net, (lo, torch.full_like(hi, float("inf"))), method="crown")
    with pytest.raises(TypeError, match="eps does not apply"):
        compute_bounds(net, (lo, hi), 0.1)
    with pytest.raises(ValueError, match="x_min"):
        compute_bounds(net, (lo, hi), method="ibp", x_min=0.0)
    with pytest.raises(TypeError, match="eps is required"):
        compute_bounds(net, x, method="ibp")
