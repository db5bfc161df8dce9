"""What a stage answers in place of an output it could not give in time."""

from __future__ import annotations

import numpy as np

from veloxserve.pipelines.spec import StageSpec
from veloxserve.pipelines.stages import Stage, fixed_batching


class Remembering(Stage):
    def __init__(self, spec: StageSpec, output_shape, mean=None) -> None:
        super().__init__(spec, "v1", output_shape)
        self.mean = mean

    def running_mean(self):
        return self.mean


def test_the_fallback_is_the_running_mean_then_the_default_then_zeros_of_the_output_shape() -> None:
    assert Remembering(StageSpec("s", "m", default=7), [3], mean=np.ones(3)).fallback()[0] == "mean"
    assert Remembering(StageSpec("s", "m", default=7), [3]).fallback() == ("default", 7)
    status, output = Remembering(StageSpec("s", "m"), [3]).fallback()
    assert status == "default" and np.array_equal(output, np.zeros(3))
    assert Remembering(StageSpec("s", "m"), []).fallback() == ("default", 0.0)
    assert Remembering(StageSpec("s", "m"), "str").fallback() == ("default", 0.0)


def test_a_planned_batch_size_is_fixed_and_aimd_is_adaptive() -> None:
    fixed = fixed_batching(8, 0.05)
    assert not fixed.adaptive and fixed.initial_size == fixed.max_size == 8
    aimd = fixed_batching(8, 0.05, aimd=True)
    assert aimd.adaptive and aimd.initial_size == 1 and aimd.objective == 0.05
