"""The TD3-update speed work keeps what SET computes: outputs pinned from the code before the
speed-ups (seeded weights and inputs), hop distances, Gram features and hand-written gradients
checked against their definitions, and the quick benchmark runs end to end."""

from __future__ import annotations

import pytest
import torch

from envs.layout import ObsLayout
from saferl.policies.graph import hop_distances
from saferl.policies.set import SETActor, SETConfig, SETCritic, _Mix, _Triangle, gram_invariants
from saferl.policies.transformer import TransformerActor, TransformerConfig, TransformerCritic

CFG = SETConfig(width=16, ff=32, heads=2, layers=2, channels=4)

# Computed with the SET code of commit 5a999a0 (before the speed-ups), by fill() and inputs().
ACTOR_EXPECTED = [
    [-0.0, -0.0, -0.0, -0.129168, -0.940439, 0.741717, -0.222675, -0.189028, 0.284036,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, -0.0, 0.0, -0.729104, -0.239878, -0.675777, -0.383957, 0.082428, 0.345745,
     -0.048967, -0.236897, 0.73059, 0.0, 0.0, 0.0],
    [-0.0, -0.0, 0.0, -0.649322, -0.574261, -0.629066, -0.722442, -0.90873, 0.07873,
     0.091405, -0.394211, -0.627792, 0.256512, -0.233936, -0.26856],
    [-0.0, -0.0, -0.0, -0.991627, -0.939213, 0.947713, -0.876002, -0.135894, -0.516504,
     -0.902797, -0.574295, 0.109712, 0.299778, -0.194017, 0.682067],
]  # fmt: skip
CRITIC_EXPECTED = [0.027711, 0.089158, 0.036325, 0.068903]

# The limb transformer (TransformerConfig(width=16, ff=32, heads=2, layers=2), fill(actor, 2),
# fill(critic, 3)), computed with the transformer code before its speed-ups (commit 23a9b37).
TRANSFORMER_ACTOR_EXPECTED = [
    [0.0, -0.0, 0.0, 0.092273, -0.136813, 0.031326, 0.053314, -0.146602, 0.017664,
     0.0, -0.0, -0.0, 0.0, -0.0, -0.0],
    [0.0, -0.0, 0.0, 0.039968, -0.148558, 0.068177, 0.137405, -0.064756, 0.034078,
     0.179829, -0.090551, -0.018601, 0.0, -0.0, -0.0],
    [0.0, -0.0, -0.0, 0.120495, -0.124157, -0.050481, 0.105389, -0.09428, 0.015932,
     0.094767, -0.198612, -0.023077, 0.094709, -0.126295, -0.079332],
    [0.0, -0.0, -0.0, 0.097712, -0.103499, -0.019153, 0.197395, -0.032069, -0.028774,
     0.150882, -0.117749, -0.023689, 0.078523, -0.182445, -0.022922],
]  # fmt: skip
TRANSFORMER_CRITIC_EXPECTED = [-0.199763, -0.1259, -0.173662, -0.20283]


def fill(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights by parameter name (independent of construction order)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.12)


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Four 5-limb flat observations (3, 4, 5 and 5 real limbs; chains and a branch)."""
    layout = ObsLayout(5)
    gen = torch.Generator().manual_seed(seed)
    _, v1, s1, m1, p1 = layout.bounds()
    obs = torch.randn(4, layout.flat_dim, generator=gen)
    parents = [[-1, 0, 1, -1, -1], [-1, 0, 1, 2, -1], [-1, 0, 1, 2, 3], [-1, 0, 1, 0, 3]]
    obs[:, s1:p1] = 0.0
    for i, (par, n) in enumerate(zip(parents, [3, 4, 5, 5], strict=True)):
        obs[i, :v1].view(5, -1)[n:] = 0
        obs[i, v1:s1].view(5, -1)[n:] = 0
        obs[i, s1 : s1 + n] = 1.0
        obs[i, m1:p1] = torch.tensor(par, dtype=torch.float32)
    actions = torch.rand(4, 5, 3, generator=gen) * 2 - 1
    return obs, actions


def pinned_nets() -> tuple[SETActor, SETCritic]:
    actor, critic = SETActor(ObsLayout(5), CFG), SETCritic(ObsLayout(5), CFG)
    fill(actor, 0)
    fill(critic, 1)
    return actor, critic


def test_set_outputs_match_the_code_before_the_speedups() -> None:
    actor, critic = pinned_nets()
    obs, actions = inputs()
    torch.testing.assert_close(actor(obs), torch.tensor(ACTOR_EXPECTED), atol=2e-5, rtol=0)
    q = critic(obs, actions).flatten()
    torch.testing.assert_close(q, torch.tensor(CRITIC_EXPECTED), atol=2e-5, rtol=0)


def test_transformer_outputs_match_the_code_before_the_speedups() -> None:
    cfg = TransformerConfig(width=16, ff=32, heads=2, layers=2)
    actor, critic = TransformerActor(ObsLayout(5), cfg), TransformerCritic(ObsLayout(5), cfg)
    fill(actor, 2)
    fill(critic, 3)
    obs, actions = inputs()
    expected = torch.tensor(TRANSFORMER_ACTOR_EXPECTED)
    torch.testing.assert_close(actor(obs), expected, atol=2e-5, rtol=0)
    q = critic(obs, actions).flatten()
    torch.testing.assert_close(q, torch.tensor(TRANSFORMER_CRITIC_EXPECTED), atol=2e-5, rtol=0)


def test_bench_td3_update_quick(experiment, capsys) -> None:
    assert experiment("bench_td3_update").main(["--quick"]) == 0
    out = capsys.readouterr().out
    for kind in ("set", "transformer", "mlp"):
        assert f"| quick | {kind} |" in out
    assert "/ MLP (CPU)" in out


@pytest.mark.parametrize("kind", ["set"])
def test_pinned_critic_is_deterministic(kind: str) -> None:
    _, critic = pinned_nets()
    obs, actions = inputs()
    torch.testing.assert_close(critic(obs, actions), critic(obs, actions), atol=0, rtol=0)


def bfs_hops(parents: list[int], max_hops: int) -> list[list[int]]:
    """Hop distances by breadth-first search over the undirected tree (the definition)."""
    n = len(parents)
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for child, parent in enumerate(parents):
        if 0 <= parent < n and parent != child:
            nbrs[child].append(parent)
            nbrs[parent].append(child)
    dist = [[max_hops + 1] * n for _ in range(n)]
    for src in range(n):
        dist[src][src], frontier = 0, [src]
        for hop in range(1, max_hops + 1):
            frontier = [j for i in frontier for j in nbrs[i] if dist[src][j] > hop]
            for j in frontier:
                dist[src][j] = hop
    return dist


@pytest.mark.parametrize("n", [1, 2, 5, 9, 14])
def test_hop_distances_match_breadth_first_search(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    for _ in range(20):
        labels = torch.randperm(n, generator=gen).tolist()  # parents need not precede children
        parents = [-1] * n
        for i in range(1, n):
            if torch.rand((), generator=gen) > 0.15:  # else a new root (a forest)
                parents[labels[i]] = labels[int(torch.randint(i, (), generator=gen))]
        for max_hops in (1, 3, 6):
            got = hop_distances(torch.tensor([parents]), max_hops)[0]
            assert got.tolist() == bfs_hops(parents, max_hops)


def test_gram_triangle_matches_gram_invariants_and_its_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    tri = _Triangle(5)
    zc = torch.randn(5, 3, 7, generator=gen)  # (k, 3, N)
    full = gram_invariants(zc[:3].permute(2, 1, 0), zc[3:].permute(2, 1, 0))  # (N, k*k)
    torch.testing.assert_close(tri.gram(zc).t(), full[:, tri.upper], atol=1e-6, rtol=0)
    zc = zc.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: tri.double().gram(x), (zc,))


def test_channel_mix_matches_its_definition_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    zc = torch.randn(5, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    coeff = torch.randn(5, 4, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    expected = torch.einsum("icn,ijn->jcn", zc, coeff)
    torch.testing.assert_close(_Mix.apply(zc, coeff), expected)
    assert torch.autograd.gradcheck(_Mix.apply, (zc, coeff))


def test_batch_of_mixed_morphologies_equals_samples_alone() -> None:
    """Sorting by limb count and leaving padding out of the per-limb work is invisible: a
    batch (including a mask with a hole) gives each sample's own outputs."""
    actor, critic = pinned_nets()
    obs, actions = inputs()
    _, _, s1, m1, _ = ObsLayout(5).bounds()
    obs = torch.cat([obs, obs[2:3]])
    obs[4, s1 + 1] = 0.0  # limb 1 masked out, limbs 2-4 real
    actions = torch.cat([actions, actions[2:3]])
    with torch.no_grad():
        alone_a = torch.cat([actor(obs[i : i + 1]) for i in range(5)])
        alone_q = torch.cat([critic(obs[i : i + 1], actions[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(actor(obs), alone_a, atol=1e-6, rtol=0)
        torch.testing.assert_close(critic(obs, actions), alone_q, atol=1e-6, rtol=0)


CHECKED_WEIGHTS = [
    "backbone.embed_vec.weight",
    "backbone.embed.0.weight",
    "backbone.layers.0.qkv.weight",
    "backbone.layers.0.bias.table.weight",
    "backbone.layers.1.ff_coeff.weight",
]


def test_set_gradients_match_finite_differences() -> None:
    """The hand-written backward passes (Gram triangle, token/grid moves) in float64, with
    respect to observations, actions and weights of every kind."""
    actor, critic = (net.double() for net in pinned_nets())
    obs, actions = (x.double()[:3] for x in inputs())
    assert torch.autograd.gradcheck(actor, (obs.requires_grad_(),), fast_mode=True)
    assert torch.autograd.gradcheck(critic, (obs, actions.requires_grad_()), fast_mode=True)
    for name in CHECKED_WEIGHTS:
        param = dict(critic.named_parameters())[name].detach().clone().requires_grad_()

        def q(p: torch.Tensor, name: str = name) -> torch.Tensor:
            return torch.func.functional_call(critic, {name: p}, (obs, actions))

        assert torch.autograd.gradcheck(q, (param,), fast_mode=True)


# ------------------------------------------------------------- the TD3 update, arranged for SET


QUICK_NETS = {
    "set": {"width": 16, "ff": 32, "heads": 2, "layers": 2, "channels": 4},
    "transformer": {"width": 16, "ff": 32, "heads": 2, "layers": 1},
    "mlp": {"hidden": [32, 32]},
}


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_limb_td3_update_equals_sb3_td3(experiment, kind: str) -> None:
    """LimbTD3.train (graph view decoded once per batch, critic weights constant in the actor
    loss, multi-tensor Polyak) gives SB3's TD3.train's weights, targets and losses."""
    import numpy as np
    from stable_baselines3 import TD3

    from saferl.online.td3 import LimbTD3

    bench = experiment("bench_td3_update")
    agents, models = ["hopper_3", "hopper_4", "hopper_5"], []
    for _ in range(2):
        model = bench.build(kind, QUICK_NETS[kind], agents, 5, 300, seed=1)
        assert isinstance(model, LimbTD3)
        models.append(model)
    losses = []
    for model, train in zip(models, [TD3.train, LimbTD3.train], strict=True):
        torch.manual_seed(0)
        np.random.seed(0)  # SB3's replay sampling
        train(model, gradient_steps=5, batch_size=64)
        losses.append({k: v for k, v in model.logger.name_to_value.items() if "loss" in k})
    assert losses[0].keys() == {"train/actor_loss", "train/critic_loss"}
    for key in losses[0]:
        assert losses[1][key] == pytest.approx(losses[0][key], abs=1e-6)
    state = [model.policy.state_dict() for model in models]  # actor, critic and their targets
    for name, value in state[0].items():
        torch.testing.assert_close(state[1][name], value, atol=1e-6, rtol=0)


def test_decoded_batch_gives_the_nets_own_outputs() -> None:
    """One decoded batch serves the actor and the critic (and any SET net of its layout)."""
    actor, critic = pinned_nets()
    obs, actions = inputs()
    decoded = actor.decode(obs)
    torch.testing.assert_close(actor(obs, decoded), actor(obs), atol=0, rtol=0)
    q = critic(obs, actions, decoded)
    torch.testing.assert_close(q, critic(obs, actions), atol=0, rtol=0)
    torch.testing.assert_close(q.flatten(), torch.tensor(CRITIC_EXPECTED), atol=2e-5, rtol=0)
    other = SETActor(ObsLayout(5), SETConfig(width=16, ff=32, heads=2, layers=2, channels=4,
                                             max_hops=3))  # fmt: skip
    with pytest.raises(ValueError, match="max_hops"):
        other(obs, decoded)


def test_polyak_is_sb3_polyak_update_and_frozen_restores_gradients() -> None:
    from stable_baselines3.common.utils import polyak_update

    from saferl.online.td3 import frozen, polyak

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=gen), torch.randn(7, generator=gen)]
    targets = [torch.randn(p.shape, generator=gen) for p in params]
    expected = [t.clone() for t in targets]
    polyak_update(params, expected, 0.005)
    polyak(params, targets, 0.005)
    for got, want in zip(targets, expected, strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="targets"):
        polyak(params, targets[:1], 0.005)
    _, critic = pinned_nets()
    critic.head[1].bias.requires_grad_(False)
    with frozen(critic):
        assert not any(p.requires_grad for p in critic.parameters())
    assert not critic.head[1].bias.requires_grad  # left as it was
    assert sum(not p.requires_grad for p in critic.parameters()) == 1


def test_folded_weights_match_their_definition_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    tri, k = _Triangle(5), 5
    weight = torch.randn(3, k * k, generator=gen, dtype=torch.float64, requires_grad=True)
    full = weight.view(3, k, k)
    expected = torch.stack([full[:, i, j] + full[:, j, i] if i < j else full[:, i, i]
                            for i, j in zip(tri.rows.tolist(), tri.cols.tolist(), strict=True)],
                           1)  # fmt: skip
    torch.testing.assert_close(tri.fold(weight), expected, atol=0, rtol=0)
    assert torch.autograd.gradcheck(tri.fold, (weight,))
