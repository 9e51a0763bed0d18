"""3D MuJoCo locomotion environments with safety costs, and planar DSRL-style velocity tasks.

``import envs`` registers every id with Gymnasium; ``envs.make(id)`` or ``gymnasium.make(id)``
builds one. See ``envs.registered_ids()``, ``envs.catalogue()`` and ``envs.suite_ids()``.
"""

from envs.builder import PhysicsSettings, build_model, to_mjcf
from envs.catalogue import FAMILIES, Catalogue, FamilySpec, Suite, catalogue, get_morphology
from envs.layout import (
    ACTIONS_PER_LIMB,
    MAX_LIMBS,
    NUM_SCALARS,
    NUM_VECTORS,
    PER_LIMB,
    SCALAR_NAMES,
    VECTOR_NAMES,
    ObsLayout,
    decode_flat,
)
from envs.locomotion import Locomotion3DEnv
from envs.morphology import Limb, Morphology
from envs.planar import PLANAR_TASKS, VelocityCostWrapper, make_planar
from envs.registration import (
    MAX_EPISODE_STEPS,
    env_id,
    make,
    planar_id,
    registered_ids,
    suite_ids,
)
from envs.symmetry import rotate_state, rotate_vectors, rotation_z

__all__ = [
    "ACTIONS_PER_LIMB", "FAMILIES", "MAX_EPISODE_STEPS", "MAX_LIMBS", "NUM_SCALARS",
    "NUM_VECTORS", "PER_LIMB", "PLANAR_TASKS", "SCALAR_NAMES", "VECTOR_NAMES", "Catalogue",
    "FamilySpec", "Limb", "Locomotion3DEnv", "Morphology", "ObsLayout", "PhysicsSettings",
    "Suite", "VelocityCostWrapper", "build_model", "catalogue", "decode_flat", "env_id",
    "get_morphology", "make", "make_planar", "planar_id", "registered_ids", "rotate_state",
    "rotate_vectors", "rotation_z", "suite_ids", "to_mjcf",
]  # fmt: skip
