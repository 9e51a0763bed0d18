"""Policy interface: shapes, masking, graph bias, bad input, the factory and SB3 policy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces

from envs.layout import ObsLayout
from saferl.policies import LimbTD3Policy, build_actor, build_critic, hop_distances, make_config

TINY = {
    "set": {"width": 16, "ff": 32, "heads": 2, "layers": 2, "channels": 4},
    "transformer": {"width": 16, "ff": 32, "heads": 2, "layers": 2},
    "mlp": {"hidden": [32]},
}


def spaces_for(max_limbs: int) -> tuple[spaces.Box, spaces.Box]:
    layout = ObsLayout(max_limbs)
    obs = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
    return obs, spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)


def scene(max_limbs: int, n_limbs: list[int], seed: int = 0) -> torch.Tensor:
    """Flat observations of chains with ``n_limbs[b]`` real limbs each."""
    gen = torch.Generator().manual_seed(seed)
    layout = ObsLayout(max_limbs)
    obs = torch.randn(len(n_limbs), layout.flat_dim, generator=gen)
    _, _, s1, m1, _ = layout.bounds()
    for b, n in enumerate(n_limbs):
        obs[b, s1:m1] = (torch.arange(max_limbs) < n).float()
        obs[b, m1:] = torch.where(torch.arange(max_limbs) < n, torch.arange(max_limbs) - 1.0, -1.0)
    return obs


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_actor_shapes_range_and_masked_rows(kind: str) -> None:
    torch.manual_seed(0)
    actor = build_actor(kind, *spaces_for(5), TINY[kind], device="cpu")
    obs = scene(5, [2, 5, 3])
    actions = actor(obs)
    assert actions.shape == (3, 15)
    assert actions.abs().max() <= 1.0
    rows = actions.reshape(3, 5, 3)
    assert torch.all(rows[:, 0] == 0)  # torso row is not actuated
    assert torch.all(rows[0, 2:] == 0) and torch.all(rows[2, 3:] == 0)  # padding
    assert rows[1, 1:].abs().sum() > 0


@pytest.mark.parametrize("kind", ["set", "transformer"])
def test_padding_does_not_change_real_limbs(kind: str) -> None:
    """Junk in padded rows (and extra padding) leaves the actions of real limbs unchanged."""
    torch.manual_seed(0)
    actor = build_actor(kind, *spaces_for(6), TINY[kind], device="cpu")
    obs = scene(6, [3, 4])
    layout = ObsLayout(6)
    v1, s1 = layout.bounds()[1], layout.bounds()[2]
    noisy = obs.clone()
    vec = noisy[:, :v1].reshape(2, 6, 24)
    vec[0, 3:] += 5.0
    sca = noisy[:, v1:s1].reshape(2, 6, 26)
    sca[1, 4:] -= 3.0
    with torch.no_grad():
        assert torch.allclose(actor(obs), actor(noisy), atol=1e-6)


@pytest.mark.parametrize("kind", ["set", "transformer", "mlp"])
def test_critic_shape_and_gradients(kind: str) -> None:
    torch.manual_seed(0)
    critic = build_critic(kind, *spaces_for(4), TINY[kind], device="cpu")
    q = critic(scene(4, [4, 2]), torch.rand(2, 4, 3))
    assert q.shape == (2, 1)
    q.sum().backward()
    grads = [p.grad for p in critic.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_hop_distances_of_a_tree() -> None:
    parents = torch.tensor([[-1, 0, 1, 0, -1]])  # chain 0-1-2, branch 0-3, padding 4
    dist = hop_distances(parents, max_hops=6)[0]
    assert dist[2, 3].item() == 3 and dist[0, 2].item() == 2 and dist[1, 1].item() == 0
    assert dist[0, 4].item() == 7  # not connected
    assert torch.equal(dist, dist.T)
    assert hop_distances(parents, max_hops=1)[0, 2, 3].item() == 2  # capped bucket


def test_observation_matching_no_layout_raises() -> None:
    actor = build_actor("set", *spaces_for(4), TINY["set"], device="cpu")
    with pytest.raises(ValueError, match="matches no limb layout"):
        actor(torch.zeros(2, ObsLayout(4).flat_dim + 1))
    with pytest.raises(ValueError, match="does not match this policy"):
        actor(torch.zeros(2, ObsLayout(5).flat_dim))  # a layout, but not this one
    bad = spaces.Box(-1, 1, (ObsLayout(4).flat_dim - 3,), np.float32)
    with pytest.raises(ValueError, match="matches no limb layout"):
        build_actor("set", bad, spaces_for(4)[1], device="cpu")


def test_bad_kind_action_space_and_config_raise() -> None:
    obs_space, act_space = spaces_for(4)
    with pytest.raises(KeyError, match="unknown policy kind"):
        build_actor("gnn", obs_space, act_space)
    with pytest.raises(ValueError, match="action space shape"):
        build_actor("mlp", obs_space, spaces.Box(-1, 1, (7,), np.float32))
    with pytest.raises(TypeError, match="unknown SETConfig fields"):
        make_config("set", {"widht": 3})
    with pytest.raises(TypeError, match="flat gymnasium Box"):
        build_actor("set", spaces.Discrete(3), act_space)


def test_sb3_policy_predicts_with_limb_nets() -> None:
    obs_space, act_space = spaces_for(4)
    policy = LimbTD3Policy(obs_space, act_space, lambda _: 1e-3, kind="set", net_config=TINY["set"])
    assert type(policy.actor.mu).__name__ == "SETActor"
    assert type(policy.critic.qf1.critic).__name__ == "SETCritic"
    actions, _ = policy.predict(scene(4, [3]).numpy()[0])
    assert actions.shape == (12,)
    qs = policy.critic(scene(4, [3, 4]), torch.zeros(2, 12))
    assert len(qs) == 2 and qs[0].shape == (2, 1)


def test_clipped_adam_clips_and_survives_copy() -> None:
    from saferl.policies.sb3 import ClippedAdam

    w = torch.nn.Parameter(torch.zeros(4))
    opt = ClippedAdam([w], lr=1.0, max_grad_norm=0.5)
    w.grad = torch.full((4,), 10.0)
    opt.step()
    assert torch.linalg.vector_norm(w.grad) == pytest.approx(0.5)  # clipped before the step
    assert copy.deepcopy(opt).max_grad_norm == 0.5
    with pytest.raises(ValueError, match="max_grad_norm"):
        ClippedAdam([w], max_grad_norm=0.0)


def test_clipped_adam_multi_tensor_equals_per_tensor_adam() -> None:
    """ClippedAdam's default multi-tensor step is the per-tensor loop torch runs on CPUs."""
    from saferl.policies.sb3 import ClippedAdam

    gen = torch.Generator().manual_seed(0)
    critic = build_critic("set", *spaces_for(4), TINY["set"], device="cpu")
    twins = [critic, copy.deepcopy(critic)]
    opts = [
        ClippedAdam(twins[0].parameters(), lr=1e-2, max_grad_norm=0.5),
        ClippedAdam(twins[1].parameters(), lr=1e-2, max_grad_norm=0.5, foreach=False),
    ]
    assert opts[0].param_groups[0]["foreach"] is True
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in critic.parameters()]
        for net, opt in zip(twins, opts, strict=True):
            for p, g in zip(net.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(twins[0].parameters(), twins[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


@pytest.mark.parametrize("kind", ["set", "transformer"])
def test_batch_is_freed_with_a_graph_whose_inputs_require_gradients(kind, monkeypatch) -> None:
    """No reference cycle through the autograd graph (which Python's garbage collector cannot
    break) when the inputs require gradients, as in SB3's actor loss: the decoded batch goes
    with the graph (it leaked, about 1 MB per TD3 update)."""
    import gc
    import weakref

    from saferl.policies.graph import LimbBatch

    batches = []
    init = LimbBatch.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        batches.append(weakref.ref(self))

    monkeypatch.setattr(LimbBatch, "__init__", recording_init)
    critic = build_critic(kind, *spaces_for(4), TINY[kind], device="cpu")
    obs = scene(4, [3, 4]).requires_grad_()
    critic(obs, torch.zeros(2, 4, 3, requires_grad=True)).sum().backward()
    gc.collect()
    assert batches and all(ref() is None for ref in batches)
