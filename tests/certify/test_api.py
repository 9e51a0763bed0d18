"""compute_bounds API: errors on bad input, coverage of layers, fast == dense, options."""

from __future__ import annotations

import math

import pytest
import torch
from certify_nets import CROWN_ACTS, mlp, one_thread
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certify import compute_bounds

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture
def net() -> nn.Sequential:
    torch.manual_seed(0)
    return mlp([3, 8, 8, 2], ["relu"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "non-negative"),
        ({"eps": float("nan")}, "non-negative"),
        ({"eps": torch.full((5,), 0.1)}, "broadcast"),
        ({"eps": 0.1, "x_min": 1.0, "x_max": -1.0}, "x_min must be <= x_max"),
        ({"eps": 0.1, "method": "zonotope"}, "method must be one of"),
        ({"eps": 0.1, "C": torch.ones(2, 5)}, "C must have shape"),
        ({"eps": 0.1, "norm": 3}, "norm must be"),
        ({"eps": 0.1, "method": "crown", "reference": "lp"}, "reference must be"),
    ],
)
def test_bad_input_raises(net, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_bounds(net, torch.randn(4, 3), **kwargs)


def test_shape_mismatch_and_nan_x(net) -> None:
    with pytest.raises(ValueError, match="5 features"):
        compute_bounds(net, torch.randn(4, 5), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        compute_bounds(net, torch.full((2, 3), float("nan")), 0.1)
    with pytest.raises(ValueError, match="batched"):
        compute_bounds(net, torch.randn(3), 0.1)


def test_unsupported_layer_named() -> None:
    conv = nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 2, 3), nn.Flatten())
    with pytest.raises(NotImplementedError, match="Conv1d"):
        compute_bounds(conv, torch.randn(2, 4), 0.1)

    class Amax(nn.Module):  # interval bounds only
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            return torch.amax(self.lin(x), dim=-1, keepdim=True)

    compute_bounds(Amax(), torch.randn(2, 3), 0.1, method="ibp")
    with pytest.raises(NotImplementedError, match="no CROWN relaxation for torch.amax.*crown"):
        compute_bounds(Amax(), torch.randn(2, 3), 0.1, method="crown")


def test_residual_crown_is_sound_and_tighter_than_ibp() -> None:
    """Residual additions are branches of the graph: CROWN sums the coefficients of both."""

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    torch.manual_seed(0)
    net, x = Res(), torch.randn(3, 4)
    ibp = compute_bounds(net, x, 0.1, method="ibp")
    pts = x.unsqueeze(1) + 0.1 * (2 * torch.rand(3, 2000, 4) - 1)
    y = net(pts)
    for method in ["crown", "crown-ibp"]:
        lo, hi = compute_bounds(net, x, 0.1, method=method)
        assert (y >= lo.unsqueeze(1) - 1e-5).all() and (y <= hi.unsqueeze(1) + 1e-5).all()
    lo, hi = compute_bounds(net, x, 0.1, method="crown")
    assert (hi - lo <= ibp[1] - ibp[0] + 1e-6).all()


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(
    seed=st.integers(0, 10**6),
    hidden=st.lists(st.integers(1, 24), min_size=1, max_size=3),
    act=st.sampled_from(sorted(CROWN_ACTS)),
    eps=st.sampled_from([0.01, 0.1, 0.5]),
    reference=st.sampled_from(["ibp", "symbolic"]),
)
def test_fast_equals_dense(seed, hidden, act, eps, reference) -> None:
    torch.manual_seed(seed)
    net = mlp([5, *hidden, 3], [act, "relu"])
    x = torch.randn(7, 5)
    C = torch.randn(7, 2, 3)
    with torch.no_grad():
        kw = {"method": "crown", "C": C, "reference": reference}
        f = compute_bounds(net, x, eps, fast=True, **kw)
        d = compute_bounds(net, x, eps, fast=False, **kw)
    torch.testing.assert_close(f[0], d[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(f[1], d[1], atol=1e-5, rtol=0)


def test_per_feature_eps_clipping_and_C(net) -> None:
    x = torch.rand(5, 3)
    e = torch.tensor([0.0, 0.1, 0.2])
    a = compute_bounds(net, x, e, method="crown")
    b = compute_bounds(net, x, e.expand(5, 3).clone(), method="crown")
    torch.testing.assert_close(a[0], b[0])
    # clipping to [0, 1] can only tighten
    c = compute_bounds(net, x, 0.5, method="crown", x_min=0.0, x_max=1.0)
    u = compute_bounds(net, x, 0.5, method="crown")
    assert (c[0] >= u[0] - 1e-6).all() and (c[1] <= u[1] + 1e-6).all()
    # a specification C = [1, -1]: bounding the difference directly is at least as tight
    C = torch.tensor([[1.0, -1.0]])
    lo, hi = compute_bounds(net, x, 0.1, method="crown", C=C)
    l2, u2 = compute_bounds(net, x, 0.1, method="crown")
    assert (lo >= l2[:, :1] - u2[:, 1:] - 1e-6).all()


@pytest.mark.parametrize("norm", [1, 2])
def test_lp_norm_balls_are_sound(net, norm) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 3)
    d = torch.randn(3, 4000, 3)
    d = d / torch.linalg.vector_norm(d, ord=norm, dim=-1, keepdim=True) * 0.3
    d = d * torch.rand(3, 4000, 1)
    y = net(x.unsqueeze(1) + d)
    for method in ["ibp", "crown", "crown-ibp"]:
        lo, hi = compute_bounds(net, x, 0.3, method=method, norm=norm)
        assert (y >= lo.unsqueeze(1) - 1e-5).all() and (y <= hi.unsqueeze(1) + 1e-5).all()
    # the l_p ball lies in the box: IBP (monotone in its input intervals) is at least as tight
    lo, hi = compute_bounds(net, x, 0.3, method="ibp", norm=norm)
    lo_inf, hi_inf = compute_bounds(net, x, 0.3, method="ibp", norm=math.inf)
    assert (hi - lo <= hi_inf - lo_inf + 1e-5).all()


def test_fx_module_matches_sequential() -> None:
    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(3, 6), nn.Linear(6, 2)

        def forward(self, x):
            return torch.tanh(self.l2(torch.relu(self.l1(x.flatten(1)))))

    m = M()
    seq = nn.Sequential(m.l1, nn.ReLU(), m.l2, nn.Tanh())
    x = torch.randn(4, 3)
    for method in ["ibp", "crown", "crown-ibp"]:
        a, b = compute_bounds(m, x, 0.2, method=method), compute_bounds(seq, x, 0.2, method=method)
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_gradients_flow_for_training(net, method) -> None:
    x = torch.randn(4, 3)
    lo, hi = compute_bounds(net, x, 0.1, method=method)
    (hi - lo).sum().backward()
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
    with torch.no_grad():  # the autograd and in-place (no-grad) paths agree
        lo2, hi2 = compute_bounds(net, x, 0.1, method=method)
    torch.testing.assert_close(lo.detach(), lo2)
    torch.testing.assert_close(hi.detach(), hi2)


@pytest.mark.gpu
def test_cuda_matches_cpu(net) -> None:
    x = torch.randn(64, 3)
    for method in ["ibp", "crown", "crown-ibp"]:
        lc, uc = compute_bounds(net, x, 0.1, method=method)
        lg, ug = compute_bounds(net.cuda(), x.cuda(), 0.1, method=method)
        net.cpu()
        torch.testing.assert_close(lg.cpu(), lc, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ug.cpu(), uc, atol=1e-4, rtol=1e-4)


def test_certify_imports_nothing_from_saferl_or_envs() -> None:
    import subprocess
    import sys

    code = (
        "import sys, certify, certify.training, certify.policy, certify.tightness;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('saferl', 'envs')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(1, 12), min_size=0, max_size=3),
    st.booleans(),
    st.booleans(),
)
def test_stacked_ibp_chain_equals_the_in_place_chain(seed, hidden, with_c, no_bias) -> None:
    """The one-product-per-layer IBP (used on CUDA) gives the in-place chain's bounds; checked on
    CPU by calling both directly."""
    from certify.bounds import get_graph
    from certify.bounds.engine import make_input_set
    from certify.bounds.ibp import _chain_inplace, _chain_stacked, _stackable

    torch.manual_seed(seed)
    sizes = [5, *hidden, 3]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=not no_bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    C = torch.randn(2, 3, dtype=torch.float64) if with_c else None
    graph = get_graph(net, x)
    assert _stackable(graph)
    with torch.no_grad():
        inp = make_input_set(x, 0.2, math.inf, None, None)
        ref = _chain_inplace(graph, inp, x.shape, C)
        got = _chain_stacked(graph, make_input_set(x, 0.2, math.inf, None, None), C)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


def test_stacked_ibp_is_not_used_for_other_activations() -> None:
    from certify.bounds import get_graph
    from certify.bounds.ibp import _stackable

    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert not _stackable(get_graph(net, torch.randn(2, 3)))


def test_crown_chunks_sorted_by_instability_keep_the_batch_order() -> None:
    """Above 256 states CROWN works in chunks of examples sorted by instability; the bounds come
    back in the caller's order (compared with small batches that are not reordered)."""
    torch.manual_seed(0)
    net = mlp([4, 16, 16, 3], ["relu"])
    x = torch.randn(300, 4)
    C = torch.randn(300, 2, 3)
    with torch.no_grad():
        lo, hi = compute_bounds(net, x, 0.3, method="crown", C=C)
        parts = [compute_bounds(net, x[s : s + 50], 0.3, "crown", C=C[s : s + 50]) for s in
                 range(0, 300, 50)]  # fmt: skip
    torch.testing.assert_close(lo, torch.cat([p[0] for p in parts]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hi, torch.cat([p[1] for p in parts]), atol=1e-5, rtol=1e-5)
