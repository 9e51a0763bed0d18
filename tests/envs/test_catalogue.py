"""The catalogue matches 3D-SGRL's families and suites; morphologies are validated."""

from __future__ import annotations

import pytest

import envs
from envs.morphology import Limb, Morphology

BODY_RANGES = {"hopper": (3, 5), "walker": (2, 7), "humanoid": (7, 9), "cheetah": (10, 14)}
SUITE_SIZES = {"Hopper++": 3, "Walker++": 6, "Humanoid++": 6, "Cheetah++": 8, "WHH++": 15,
               "CWHH++": 23}  # fmt: skip


def test_family_body_counts() -> None:
    cat = envs.catalogue()
    for family, (lo, hi) in BODY_RANGES.items():
        counts = {cat.agents[n].num_limbs for n in cat.family(family)}
        assert min(counts) == lo and max(counts) == hi
    assert max(m.num_limbs for m in cat.agents.values()) == envs.MAX_LIMBS


def test_suites_sizes_and_heldout_disjoint() -> None:
    suites = envs.catalogue().suites
    for name, size in SUITE_SIZES.items():
        assert len(suites[name].train) == size
        assert not set(suites[name].train) & set(suites[name].heldout)
        assert len(envs.suite_ids(name, "heldout")) == len(suites[name].heldout) >= 1


def test_every_agent_compiles_with_three_motors_per_limb() -> None:
    for morph in envs.catalogue().agents.values():
        model = envs.build_model(morph, envs.FAMILIES[morph.family].physics)
        assert model.nu == 3 * (morph.num_limbs - 1)
        assert model.opt.cone == 1  # mjCONE_ELLIPTIC
        assert model.njnt == 1 + 3 * (morph.num_limbs - 1)


def test_malformed_morphology_is_rejected() -> None:
    torso = Limb("torso", -1, (0, 0, 0), (0, 0, 1), 0.4, 0.05)
    with pytest.raises(ValueError, match="parent"):
        Morphology("bad", "walker", (torso, Limb("leg", 3, (0, 0, 0), (0, 0, -1), 0.4, 0.05)), 1.0)
    with pytest.raises(ValueError, match="unit vector"):
        Morphology("bad", "walker", (torso, Limb("leg", 0, (0, 0, 0), (0, 0, -2), 0.4, 0.05)), 1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        leg = Limb("leg", 0, (0, 0, 0), (0, 0, -1), 0.4, 0.05, ((1, 0), (0, 1), (0, 1)))
        Morphology("bad", "walker", (torso, leg), 1.0)
