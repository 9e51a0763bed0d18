"""Soft invariance: on a target that breaks rotations about the vertical axis but respects the
x-z mirror (like a constraint on a world-fixed half-plane x >= c), the tuned strengths single
out rotation as the approximate symmetry."""

from __future__ import annotations

import torch
from test_set_equivariance import random_scenes

from envs.layout import decode_flat
from saferl.policies.soft_equivariance import (
    SoftInvariance,
    SoftInvarianceConfig,
    non_invariance,
    sample_mirror,
    sample_rotation,
)


def target(obs: torch.Tensor) -> torch.Tensor:
    """Invariant part plus the world-x component of the target direction."""
    v = decode_flat(obs)["vectors"]
    invariant = (v[:, 1, 0] ** 2).sum(-1) / 4 + torch.tanh(v[:, :, 3, 2].sum(-1))
    return (invariant + v[:, 0, 2, 0])[:, None]


def test_strengths_find_the_approximate_symmetry() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, val = random_scenes(2048, 4, 1), random_scenes(512, 4, 2)
    y_train, y_val = target(train), target(val)
    model = torch.nn.Sequential(
        torch.nn.Linear(train.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
        torch.nn.ReLU(), torch.nn.Linear(128, 1),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    reg = SoftInvariance(SoftInvarianceConfig())
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        i = torch.randint(0, 2048, (128,), generator=gen)
        j = torch.randint(0, 512, (128,), generator=gen)
        stats = reg.step(
            model, opt, train[i],
            lambda m, i=i: (m(train[i]) - y_train[i]).square().mean(),
            lambda m, j=j: (m(val[j]) - y_val[j]).square().mean(),
            gen,
        )  # fmt: skip
    torch.set_num_threads(threads)
    assert stats["lambda/rotation_z"] < stats["lambda/mirror_xz"]
    with torch.no_grad():
        assert non_invariance(model, val, sample_rotation) > non_invariance(
            model, val, sample_mirror
        )
