"""The compact default architecture learns one synthetic task well above chance."""

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rsia_lite_tiny_learns_deepfakes(train_one_stage):
    acc = train_one_stage({"name": "rsia_lite", "preset": "tiny"}, epochs_per_task=6)
    assert acc.get(0, 0) >= 0.75  # chance is 0.5
