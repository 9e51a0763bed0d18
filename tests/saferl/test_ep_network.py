"""EPNetwork: structure, asymmetry angle, relaxation, complex arithmetic, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.ep import EPNetConfig, EPNetwork, get_activation

F64 = torch.float64


def small(angle: float = 45.0, activation: str = "sigmoid4", seed: int = 1) -> EPNetwork:
    cfg = EPNetConfig(
        in_dim=8,
        hidden=(6, 5),
        n_classes=4,
        angle_deg=angle,
        activation=activation,
        dtype="float64",
    )
    return EPNetwork(cfg, device="cpu", seed=seed)


def test_angle_zero_ties_feedback_to_forward_transpose():
    net = small(0.0)
    for l, b in enumerate(net.B):
        assert torch.equal(b, net.W[l + 1].T)


def test_angle_rotates_between_transpose_and_random():
    n0, n90, n45 = small(0.0), small(90.0), small(45.0)
    for l in range(len(n45.B)):
        b0 = n90.B[l].detach() - math.cos(math.pi / 2) * n90.W[l + 1].detach().T
        expect = math.sin(math.pi / 4) * b0 + math.cos(math.pi / 4) * n0.W[l + 1].detach().T
        torch.testing.assert_close(n45.B[l].detach(), expect)
        assert torch.equal(n45.W[l + 1], n0.W[l + 1])


def test_free_phase_reaches_fixed_point_and_reports_residual():
    torch.manual_seed(0)
    net = small(90.0)
    x = torch.rand(7, 8, dtype=F64)
    u, stats = net.free_phase(x, steps=150)
    assert u.shape == (7, net.n_units)
    assert stats.residual.shape == (7,)
    assert bool(stats.converged.all()) and not bool(stats.oscillating.any())
    torch.testing.assert_close(net.vector_field(u, x), torch.zeros_like(u), atol=1e-10, rtol=0)
    s = stats.summary()
    assert s["n_not_converged"] == 0 and s["n_samples"] == 7


def test_free_phase_counts_oscillating_samples():
    """A strongly negative self-coupling makes a period-2 cycle; it must be counted, not hidden."""
    net = small(0.0)
    with torch.no_grad():
        # One hidden layer feeding back -10x the transpose of a big forward matrix: u flips sign.
        net.W[1].mul_(40.0)
        net.B[0].copy_(-net.W[1].T)
    x = torch.rand(5, 8, dtype=F64)
    _, stats = net.free_phase(x, steps=60)
    assert int((~stats.converged).sum()) > 0
    assert stats.summary()["n_not_converged"] == int((~stats.converged).sum())


def test_vector_field_batches_over_leading_dims_and_complex():
    torch.manual_seed(0)
    net = small(30.0)
    x = torch.rand(3, 8, dtype=F64)
    y = torch.tensor([0, 1, 3])
    u = torch.randn(3, net.n_units, dtype=F64)
    f = net.vector_field(u, x, 0.3, y)
    stacked = net.vector_field(u.expand(2, 3, -1), x.expand(2, 3, -1), 0.3, y.expand(2, 3))
    torch.testing.assert_close(stacked[1], f)
    fc = net.vector_field(u.to(torch.complex128), x.to(torch.complex128), 0.3 + 0j, y)
    torch.testing.assert_close(fc.real, f)
    assert fc.imag.abs().max() < 1e-12


def test_loss_grad_rates_matches_autograd():
    torch.manual_seed(0)
    for loss in ("xent", "mse"):
        cfg = EPNetConfig(in_dim=8, hidden=(6,), n_classes=4, loss=loss, dtype="float64")
        net = EPNetwork(cfg, device="cpu")
        u = torch.randn(5, net.n_units, dtype=F64)
        y = torch.randint(0, 4, (5,))
        r = net.rho(u).requires_grad_(True)
        z = net.logits(net.split(r)[-1])
        if loss == "mse":
            ell = 0.5 * ((z - torch.nn.functional.one_hot(y, 4)) ** 2).sum()
        else:
            ell = torch.nn.functional.cross_entropy(z, y, reduction="sum")
        (g,) = torch.autograd.grad(ell, r)
        torch.testing.assert_close(net.loss_grad_rates(u, y), g)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_dim": 0},
        {"hidden": (4, -1)},
        {"angle_deg": float("nan")},
        {"loss": "hinge"},
        {"dtype": "float16"},
    ],
)
def test_bad_config_raises(kwargs):
    base = {"in_dim": 8, "hidden": (6,), "n_classes": 4}
    with pytest.raises(ValueError):
        EPNetConfig(**{**base, **kwargs})


def test_unknown_activation_names_choices():
    with pytest.raises(KeyError, match="sigmoid4"):
        get_activation("swish")


def test_bad_input_raises_before_work():
    net = small()
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        net.free_phase(torch.rand(3, 7, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        net.free_phase(torch.full((3, 8), float("nan"), dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        net.free_phase(torch.rand(3, 8, dtype=torch.float32))
    with pytest.raises(ValueError, match="labels"):
        net.check_input(torch.rand(3, 8, dtype=F64), torch.tensor([0, 1, 9]))
    with pytest.raises(ValueError, match="shape"):
        net.check_input(torch.rand(3, 8, dtype=F64), torch.tensor([0, 1]))


@pytest.mark.gpu
def test_runs_on_cuda():
    net = EPNetwork(EPNetConfig(in_dim=8, hidden=(6,), n_classes=4), device="cuda")
    x = torch.rand(4, 8, device="cuda")
    u, stats = net.free_phase(x, steps=50)
    assert u.device.type == "cuda" and stats.residual.device.type == "cuda"
