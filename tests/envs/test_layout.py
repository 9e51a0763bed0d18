"""The flat layout decodes to the graph view; sizes matching no layout are rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.layout import MAX_LIMBS, NUM_SCALARS, NUM_VECTORS, PER_LIMB, ObsLayout, decode_flat


@pytest.mark.parametrize("limbs", [1, 5, MAX_LIMBS])
def test_decode_flat_shapes_numpy_and_torch(limbs: int) -> None:
    flat = np.arange(2 * 3 * limbs * PER_LIMB, dtype=np.float32).reshape(2, 3, -1)
    out = decode_flat(flat)
    assert out["vectors"].shape == (2, 3, limbs, NUM_VECTORS, 3)
    assert out["scalars"].shape == (2, 3, limbs, NUM_SCALARS)
    assert out["mask"].shape == out["parents"].shape == (2, 3, limbs)
    tout = decode_flat(torch.from_numpy(flat))
    for key in out:
        np.testing.assert_array_equal(tout[key].numpy(), out[key])
    assert out["parents"][..., -1].ravel()[0] == flat[0, 0, -1]


def test_size_matching_no_layout_raises() -> None:
    with pytest.raises(ValueError, match="matches no limb layout"):
        decode_flat(np.zeros((4, PER_LIMB * 3 + 1)))
    with pytest.raises(ValueError, match="max_limbs"):
        ObsLayout(0)
