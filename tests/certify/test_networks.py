"""The networks the toolkit trains, bounded as they are: SET, limb-transformer and MLP actors and
critics (small and reference sizes), SB3 TD3/SAC actors, FISOR's fused Q ensembles and noise
network, BC and BCQ-Lag actors. For each: the fixed-structure form equals the network, and no
sampled point of the eps-ball (uniform and corners, >= 10^4 per network) nor a PGD attack leaves
the IBP, CROWN or CROWN-IBP bounds; CROWN is no wider than IBP. Also the operators added for
them (abs, clamp, min/max, log, sin/cos, vector norm), each under hypothesis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from certify_nets import one_thread, pgd_escape, sample_box
from gymnasium import spaces
from hypothesis import given
from hypothesis import strategies as st
from test_operators import SETTINGS, _net, check, problems
from torch import nn

from certify import compute_bounds
from certify.policy import ConcatCritic, as_actor_module
from envs.layout import ObsLayout
from saferl.policies import build_actor, build_critic, build_value
from saferl.policies.sb3 import CriticAdapter

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

METHODS = ("ibp", "crown", "crown-ibp")
SMALL = {
    "set": {"width": 32, "ff": 64, "heads": 2, "layers": 2, "channels": 8},
    "transformer": {"width": 32, "ff": 64, "heads": 2, "layers": 2},
    "mlp": {"hidden": [256, 256]},
}
REFERENCE = {"set": None, "transformer": None, "mlp": None}  # the config defaults
N_POINTS = 10_000


def spaces_for(max_limbs: int) -> tuple[spaces.Box, spaces.Box]:
    layout = ObsLayout(max_limbs)
    obs = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
    return obs, spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)


def scene(max_limbs: int, n_limbs: list[int], seed: int = 0) -> torch.Tensor:
    """Flat observations of chains with ``n_limbs[b]`` real limbs (scaled like the envs')."""
    gen = torch.Generator().manual_seed(seed)
    layout = ObsLayout(max_limbs)
    obs = 0.5 * torch.randn(len(n_limbs), layout.flat_dim, generator=gen)
    _, _, s1, m1, _ = layout.bounds()
    limbs = torch.arange(max_limbs)
    for b, n in enumerate(n_limbs):
        obs[b, s1:m1] = (limbs < n).float()
        obs[b, m1:] = torch.where(limbs < n, limbs - 1.0, -1.0)
    return obs


def violations(f, model, lo_x, hi_x, gen, n_points=N_POINTS, pgd=True) -> dict:
    """Bounds of every method on the box [lo_x, hi_x] (B, D); sampled points (half uniform,
    half corners; ``n_points`` in all) and PGD points outside them, and mean widths."""
    B = lo_x.shape[0]
    bounds = {}
    for method in METHODS:
        with torch.no_grad():
            bounds[method] = compute_bounds(model, (lo_x, hi_x), method=method)
    with torch.no_grad():
        pts = sample_box(lo_x, hi_x, max(n_points // B, 2), gen)
        ys = [f(p) for p in pts.split(2048, 1)]
        y = torch.cat([*ys, f(((lo_x + hi_x) / 2).unsqueeze(1))], 1)
    out = {"samples": y.shape[0] * y.shape[1]}
    for method, (lo, hi) in bounds.items():
        yy = y
        if pgd:
            adv = pgd_escape(f, lo_x, hi_x, lo, hi, steps=10, starts=8, gen=gen)
            with torch.no_grad():
                yy = torch.cat([y, f(adv)], 1)
        tol = 1e-5 * (1 + torch.maximum(lo.abs(), hi.abs()))
        bad = (yy < (lo - tol).unsqueeze(1)) | (yy > (hi + tol).unsqueeze(1))
        out[method] = (int(bad.sum()), float((hi - lo).mean()))
    return out


def assert_sound(result: dict) -> None:
    for method in METHODS:
        assert result[method][0] == 0, f"{result[method][0]} points escape {method}: {result}"
    crown, ibp = result["crown"][1], result["ibp"][1]
    assert crown <= ibp * (1 + 1e-6) + 1e-9, result


def batched(net):
    """(B, n, D) points -> (B, n, out) outputs of ``net`` on (N, D) rows."""

    def f(p: torch.Tensor) -> torch.Tensor:
        return net(p.reshape(-1, p.shape[-1])).reshape(p.shape[0], p.shape[1], -1)

    return f


# ---------------------------------------------------------------- limb-graph policies


def _actor(kind: str, config, limbs: int = 4):
    torch.manual_seed(0)
    return build_actor(kind, *spaces_for(limbs), config, device="cpu").eval()


def _critic(kind: str, config, limbs: int = 4):
    torch.manual_seed(1)
    return CriticAdapter(build_critic(kind, *spaces_for(limbs), config, device="cpu")).eval()


def _value(kind: str, config, limbs: int = 4):
    torch.manual_seed(2)
    return build_value(kind, spaces_for(limbs)[0], config, device="cpu").eval()


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_fixed_structure_forms_equal_the_networks(kind: str) -> None:
    actor, critic = _actor(kind, SMALL[kind], 5), _critic(kind, SMALL[kind], 5)
    value = _value(kind, SMALL[kind], 5)
    obs = scene(5, [2, 5, 3, 5, 1], seed=3)
    z = torch.cat([obs, torch.rand(5, 15) * 2 - 1], 1)
    with torch.no_grad():
        for net, x in ((actor, obs), (critic, z), (value, obs)):
            groups = net.certify_structure(x, x)
            assert sorted(torch.cat([r for r, _ in groups]).tolist()) == list(range(5))
            for rows, module in groups:
                torch.testing.assert_close(module(x[rows]), net(x[rows]), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_small_actors_sound(kind: str) -> None:
    actor = _actor(kind, SMALL[kind])
    obs = scene(4, [3, 4])
    eps = 1e-3
    gen = torch.Generator().manual_seed(0)
    result = violations(batched(actor), actor, obs - eps, obs + eps, gen)
    assert_sound(result)
    assert result["crown"][1] < 0.5  # informative, where IBP through attention is not


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_small_state_values_sound(kind: str) -> None:
    """PPO's V(s) of every kind."""
    value = _value(kind, SMALL[kind])
    obs = scene(4, [4, 2])
    gen = torch.Generator().manual_seed(3)
    assert_sound(violations(batched(value), value, obs - 1e-3, obs + 1e-3, gen))


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
@pytest.mark.parametrize("fixed_action", [False, True])
def test_small_critics_sound(kind: str, fixed_action: bool) -> None:
    critic = _critic(kind, SMALL[kind])
    obs = scene(4, [3, 2])
    z = torch.cat([obs, torch.rand(2, 12, generator=torch.Generator().manual_seed(2)) * 2 - 1], 1)
    eps = torch.full_like(z, 1e-3)
    if fixed_action:
        eps[:, obs.shape[1] :] = 0
    gen = torch.Generator().manual_seed(1)
    assert_sound(violations(batched(critic), critic, z - eps, z + eps, gen))


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_reference_actors_sound_ibp_and_crown_ibp(kind: str) -> None:
    """Reference sizes, a 3-limb morphology, one state; CROWN: the slow test below."""
    actor = _actor(kind, REFERENCE[kind], 3)
    obs = scene(3, [3])
    lo_x, hi_x = obs - 1e-4, obs + 1e-4
    gen = torch.Generator().manual_seed(0)
    f = batched(actor)
    with torch.no_grad():
        y = torch.cat([f(sample_box(lo_x, hi_x, N_POINTS, gen)), f(obs.unsqueeze(1))], 1)
    for method in ("ibp", "crown-ibp"):
        with torch.no_grad():
            lo, hi = compute_bounds(actor, obs, 1e-4, method=method)
        adv = pgd_escape(f, lo_x, hi_x, lo, hi, steps=5, starts=4, gen=gen)
        with torch.no_grad():
            yy = torch.cat([y, f(adv)], 1)
        assert not ((yy < lo.unsqueeze(1) - 1e-5) | (yy > hi.unsqueeze(1) + 1e-5)).any()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_reference_actors_sound_crown(kind: str) -> None:
    actor = _actor(kind, REFERENCE[kind], 3)
    obs = scene(3, [3])
    gen = torch.Generator().manual_seed(0)
    assert_sound(violations(batched(actor), actor, obs - 1e-4, obs + 1e-4, gen))


def test_structure_crossing_a_threshold_raises() -> None:
    actor = _actor("set", SMALL["set"])
    obs = scene(4, [3])
    with pytest.raises(ValueError, match="limb structure"):
        compute_bounds(actor, obs, 0.6, method="ibp")
    eps = torch.full_like(obs, 0.6)
    eps[:, ObsLayout(4).bounds()[2] :] = 0.0  # mask and parents exact: any eps elsewhere
    lo, hi = compute_bounds(actor, obs, eps, method="ibp")
    assert bool(((lo <= actor(obs)) & (actor(obs) <= hi)).all())
    with pytest.raises(ValueError, match=r"SETActor bounds observations of shape \(B, 208\)"):
        compute_bounds(actor, torch.zeros(1, 260), 0.1, method="ibp")


def test_sb3_limb_actors_are_their_policy_nets() -> None:
    from stable_baselines3 import SAC, TD3

    from saferl.policies import LimbSACPolicy, LimbTD3Policy

    class Env:
        observation_space, action_space = spaces_for(3)

    import gymnasium as gym

    class Dummy(gym.Env):
        observation_space, action_space = Env.observation_space, Env.action_space

        def reset(self, seed=None, options=None):
            return self.observation_space.sample() * 0, {}

        def step(self, a):
            return self.observation_space.sample() * 0, 0.0, False, False, {}

    obs = scene(3, [3, 2])
    for algo, policy in ((TD3, LimbTD3Policy), (SAC, LimbSACPolicy)):
        kwargs = {"kind": "set", "net_config": {**SMALL["set"], "layers": 1}}
        model = algo(policy, Dummy(), policy_kwargs=kwargs, device="cpu")
        net = as_actor_module(model.policy.actor)
        with torch.no_grad():
            det = model.policy._predict(obs, deterministic=True)
        torch.testing.assert_close(net(obs), det)
        lo, hi = compute_bounds(net, obs, 1e-3, method="crown")
        assert bool(((lo <= det + 1e-6) & (det <= hi + 1e-6)).all())
        critic = ConcatCritic(model.policy.critic, obs.shape[1])
        z = torch.cat([obs, det], 1)
        q_lo, q_hi = compute_bounds(critic, z, 1e-3, method="crown")
        q = critic(z)
        assert bool(((q_lo <= q + 1e-5) & (q <= q_hi + 1e-5)).all())


# ---------------------------------------------------------------- operators added for them


OPS = {
    "abs": lambda a, b: torch.abs(a) - b,
    "clamp": lambda a, b: torch.clamp(a, -0.3, 0.5) + b,
    "clamp_min": lambda a, b: a.clamp(min=0.1) * 2 - b,
    "maximum": lambda a, b: torch.maximum(a, b),
    "minimum": lambda a, b: torch.minimum(a, 2 * b),
    "max_const": lambda a, b: torch.maximum(a, torch.tensor(0.2, dtype=a.dtype)) + b,
    "min_const_vec": lambda a, b: torch.min(a, torch.tensor([0.2, -0.1, 0.0], dtype=a.dtype)) - b,
    "log": lambda a, b: torch.log(torch.exp(a) + 0.2) - b,
    "sin": lambda a, b: torch.sin(3 * a) + b,
    "cos": lambda a, b: torch.cos(2 * a) * 1.5 - b,
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_new_operators_sound(name: str) -> None:
    body = OPS[name]

    @SETTINGS
    @given(problems(max_eps=1.0), st.integers(1, 3))
    def run(problem, k) -> None:
        _, d, x, eps, gen = problem
        k = 3 if name.endswith("_vec") else k  # the constant's length
        check(_net(d, (k,), body, dtype=x.dtype), x, eps, gen, attack=True)

    run()


def test_vector_norm_sound() -> None:
    def body(a, b):
        return torch.linalg.vector_norm(a, dim=-1, keepdim=True) + b.norm(dim=-1, keepdim=True)

    @SETTINGS
    @given(problems(), st.integers(1, 3), st.integers(1, 4))
    def run(problem, T, k) -> None:
        _, d, x, eps, gen = problem
        check(_net(d, (T, k), body, dtype=x.dtype), x, eps, gen, attack=True)

    run()


def test_new_operators_refuse_what_they_cannot_bound() -> None:
    x = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"torch.log.*> 0"):
        compute_bounds(_net(3, (2,), lambda a, b: torch.log(a)), x, 1.0, method="crown")
    l1 = _net(3, (2,), lambda a, b: a.norm(p=1, dim=-1, keepdim=True))
    with pytest.raises(NotImplementedError, match="Euclidean norm"):
        compute_bounds(l1, x, 0.1, method="ibp")
    reduction = _net(3, (2,), lambda a, b: torch.max(a, 1, keepdim=True).values)
    with pytest.raises(NotImplementedError, match="reduction"):
        compute_bounds(reduction, x, 0.1, method="ibp")


def test_sin_interval_is_exact_at_extrema() -> None:
    from certify.bounds.pointwise import Sin

    lo = torch.tensor([[0.0, 1.0, -2.0, 4.0]], dtype=torch.float64)
    hi = torch.tensor([[3.0, 1.2, -1.0, 10.0]], dtype=torch.float64)
    low, up = Sin().ibp((lo, hi))
    z = lo + (hi - lo) * torch.linspace(0, 1, 100_001, dtype=torch.float64).unsqueeze(-1)
    s = torch.sin(z)
    torch.testing.assert_close(low, s.amin(0, keepdim=True), atol=1e-8, rtol=0)
    torch.testing.assert_close(up, s.amax(0, keepdim=True), atol=1e-8, rtol=0)
    assert math.isclose(float(up[0, 0]), 1.0, abs_tol=1e-12)


# ---------------------------------------------------------------- offline learners

OBS, ACT = 11, 3  # Hopper's sizes


def _fisor(reference: bool):
    from saferl.offline.fisor import FISORConfig, FISORNets

    small = {"critic_hidden": (32, 32), "actor_width": 32, "actor_blocks": 1, "time_dim": 16}
    torch.manual_seed(0)
    return FISORNets(OBS, ACT, FISORConfig() if reference else FISORConfig(**small)).eval()


def _per_member(ensemble):
    """(B, n, D) -> (B, n, E): an ensemble's (E, N) outputs, batch first."""

    def f(p: torch.Tensor) -> torch.Tensor:
        return ensemble(p.reshape(-1, p.shape[-1])).T.reshape(p.shape[0], p.shape[1], -1)

    return f


@pytest.mark.parametrize("reference", [False, True])
def test_fisor_critics_sound(reference: bool) -> None:
    """The fused Q_r/Q_h ensemble (all members), the Q_h view and the values."""
    nets = _fisor(reference)
    gen = torch.Generator().manual_seed(0)
    sa = torch.randn(2, OBS + ACT, generator=gen)
    lo, hi = sa - 0.01, sa + 0.01
    assert_sound(violations(_per_member(nets.critic), nets.critic, lo, hi, gen))
    q_h = nets.q_h
    assert_sound(violations(_per_member(q_h), q_h.bounded(), lo, hi, gen))
    s = sa[:, :OBS]
    assert_sound(violations(_per_member(nets.value), nets.value, s - 0.01, s + 0.01, gen))


@pytest.mark.parametrize("reference", [False, True])
def test_fisor_noise_network_sound(reference: bool) -> None:
    """eps_theta(a_t, s, t) on [a_t, s, t]: a_t and s bounded, the diffusion time fixed (its
    Fourier features are sin/cos of a constant) or, small sizes only, bounded as well."""
    nets = _fisor(reference)
    gen = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(2, ACT + OBS, generator=gen), torch.tensor([[3.0], [0.0]])], 1)
    eps = torch.full_like(z, 1e-3)
    eps[:, -1] = 0.0

    def f(p: torch.Tensor) -> torch.Tensor:
        q = p.reshape(-1, p.shape[-1])
        out = nets.actor(q[:, :ACT], q[:, ACT : ACT + OBS], q[:, -1])
        return out.reshape(p.shape[0], p.shape[1], -1)

    n = 2_000 if reference else N_POINTS
    assert_sound(violations(f, nets.actor, z - eps, z + eps, gen, n_points=n))
    if not reference:
        eps[:, -1] = 0.05
        assert_sound(violations(f, nets.actor, z - eps, z + eps, gen))


def test_bc_and_bcq_lag_actors_sound() -> None:
    from saferl.offline.bcq_lag import BCQLagConfig, BCQLagNets
    from saferl.offline.bounded import BCQLagPolicy
    from saferl.offline.networks import MLP

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    bc = MLP(OBS, ACT, (256, 256), squash=True)  # BC's actor
    s = torch.randn(2, OBS, generator=gen)
    assert_sound(violations(batched(bc), bc, s - 0.01, s + 0.01, gen))
    nets = BCQLagNets(OBS, ACT, BCQLagConfig()).eval()
    sa = torch.cat([s, torch.rand(2, ACT, generator=gen) * 2 - 1], 1)
    actor = nets.actor

    def perturbed(p: torch.Tensor) -> torch.Tensor:
        q = p.reshape(-1, p.shape[-1])
        return actor(q[:, :OBS], q[:, OBS:]).reshape(p.shape[0], p.shape[1], -1)

    assert_sound(violations(perturbed, actor, sa - 0.01, sa + 0.01, gen))
    policy = BCQLagPolicy(nets)  # the deterministic act: latent 0, fixed
    sz = torch.cat([s, torch.zeros(2, nets.vae.latent)], 1)
    eps = torch.zeros_like(sz)
    eps[:, :OBS] = 0.01
    with torch.no_grad():
        act = nets.actor(s, nets.vae.decode(s, torch.zeros(2, nets.vae.latent)))
    torch.testing.assert_close(policy(sz), act)
    assert_sound(violations(batched(policy), policy, sz - eps, sz + eps, gen))


def test_sb3_mlp_actors_sound() -> None:
    """SB3's own TD3 actor and SAC's squashed-Gaussian mean path (deterministic action)."""
    import gymnasium as gym
    from stable_baselines3 import SAC, TD3

    class Dummy(gym.Env):
        observation_space = spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
        action_space = spaces.Box(-1.0, 1.0, (ACT,), np.float32)

        def reset(self, seed=None, options=None):
            return np.zeros(OBS, np.float32), {}

        def step(self, a):
            return np.zeros(OBS, np.float32), 0.0, False, False, {}

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, OBS, generator=gen)
    for algo in (TD3, SAC):
        model = algo("MlpPolicy", Dummy(), device="cpu", seed=0)
        net = as_actor_module(model.policy.actor)
        with torch.no_grad():
            torch.testing.assert_close(net(s), model.policy._predict(s, deterministic=True))
        assert_sound(violations(batched(net), net, s - 0.01, s + 0.01, gen))


def test_experiment_quick(experiment, tmp_path, capsys) -> None:
    import json

    assert experiment("certify_networks").main(["--quick", "--out", str(tmp_path)]) == 0
    assert "CROWN" in capsys.readouterr().out
    rows = json.loads((tmp_path / "certify_networks_quick.json").read_text())["rows"]
    assert len(rows) >= 8
    for row in rows:
        assert all(row[m]["violations"] == 0 for m in METHODS), row
        assert float(row["crown"]["width"]) <= float(row["ibp"]["width"]) * (1 + 1e-6), row


class _Grouped(nn.Module):
    """``x -> 2 x`` whose structure hook returns what it is given (protocol checks)."""

    def __init__(self, groups) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    def certify_structure(self, lo, hi):
        return self.groups(lo) if callable(self.groups) else self.groups


def test_structure_protocol_groups_are_checked() -> None:
    x = torch.randn(3, 3)
    plain = _Grouped(None)  # None: no structure, the module itself is traced
    lo, hi = compute_bounds(plain, x, 0.1, method="crown")
    assert bool(((lo <= plain(x)) & (plain(x) <= hi)).all())
    split = _Grouped(lambda lo: [(torch.tensor([2, 0]), plain.lin), (torch.tensor([1]), plain.lin)])
    torch.testing.assert_close(compute_bounds(split, x, 0.1, method="crown"), (lo, hi))
    missing = _Grouped(lambda lo: [(torch.tensor([0, 1]), plain.lin)])
    with pytest.raises(ValueError, match="exactly one group"):
        compute_bounds(missing, x, 0.1, method="ibp")
    not_module = _Grouped(lambda lo: [(torch.arange(3), lambda z: z)])
    with pytest.raises(TypeError, match="not an nn.Module"):
        compute_bounds(not_module, x, 0.1, method="ibp")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_new_relaxations_on_a_dense_grid(dtype) -> None:
    """Every line of the new element-wise relaxations bounds the function on a dense grid of
    [l, u] (kinks, extrema and endpoints included)."""
    from certify.bounds.pointwise import Abs, Clamp, ConstMaxMin, Cos, Log, Sin

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, generator=gen, dtype=dtype) * 3
    w = torch.rand(400, generator=gen, dtype=dtype) * torch.tensor([0.0, 0.01, 1, 8])[
        torch.randint(0, 4, (400,), generator=gen)
    ].to(dtype)
    lo, hi = a - w, a + w
    c = torch.randn(400, generator=gen, dtype=dtype)
    ops = [Abs(), Clamp(-0.3, 0.5), Clamp(0.1, None), ConstMaxMin(c, True), Sin(), Cos()]
    cases = [(op, lo, hi) for op in ops] + [(ConstMaxMin(c, False), lo, hi)]
    cases.append((Log(), lo.abs() + 0.05, lo.abs() + 0.05 + 2 * w))
    for op, l, u in cases:
        ls, lb, us, ub = op.relaxation((l, u))
        lb = torch.zeros_like(l) if lb is None else lb
        z = l.unsqueeze(0) + (u - l).unsqueeze(0) * torch.linspace(0, 1, 2001, dtype=dtype)[:, None]
        fz = op.forward(z) if not isinstance(op, ConstMaxMin) else op.fn(z)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert bool((ls * z + lb <= fz + tol * (1 + fz.abs())).all()), type(op).__name__
        assert bool((fz <= us * z + ub + tol * (1 + fz.abs())).all()), type(op).__name__
        i_lo, i_hi = op.ibp((l, u))
        assert bool((i_lo <= fz.amin(0) + tol).all() and (fz.amax(0) <= i_hi + tol).all())


def test_bounds_follow_in_place_weight_updates() -> None:
    """A traced graph folds what is computed from parameters (here 2 W, the limb nets' hop
    bias): an optimiser step must not leave bounds of the old weights behind."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ (2 * self.w).t()

    torch.manual_seed(0)
    x = torch.randn(2, 4)
    for net in (Scaled(), _actor("set", SMALL["set"])):
        obs = x if isinstance(net, Scaled) else scene(4, [3, 4])
        compute_bounds(net, obs, 0.0, method="crown")
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        net(obs).square().sum().backward()
        opt.step()
        with torch.no_grad():
            lo, hi = compute_bounds(net, obs, 0.0, method="crown")
            torch.testing.assert_close(lo, net(obs), atol=1e-5, rtol=1e-5)
