"""The TD3-update speed work keeps what SET computes: outputs pinned from the code before the
speed-ups (seeded weights and inputs), and the quick benchmark runs end to end."""

from __future__ import annotations

import pytest
import torch

from envs.layout import ObsLayout
from saferl.policies.set import SETActor, SETConfig, SETCritic

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


def test_bench_td3_update_quick(experiment, capsys) -> None:
    assert experiment("bench_td3_update").main(["--quick"]) == 0
    out = capsys.readouterr().out
    for kind in ("set", "transformer", "mlp"):
        assert f"| quick | {kind} |" in out
    assert "SET/MLP per repeat" in out


@pytest.mark.parametrize("kind", ["set"])
def test_pinned_critic_is_deterministic(kind: str) -> None:
    _, critic = pinned_nets()
    obs, actions = inputs()
    torch.testing.assert_close(critic(obs, actions), critic(obs, actions), atol=0, rtol=0)
