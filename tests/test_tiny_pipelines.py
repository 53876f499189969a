"""The tiny offline pipelines of :mod:`tiny_pipelines` build and run end to end, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threads import one_thread
from tiny_pipelines import CALL_KWARGS, EXPECTED_SHAPES, PIPELINES, output_of

STEPS = 4


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def _generate(pipe, name: str, seed: int = 0) -> np.ndarray:
    result = pipe(
        **CALL_KWARGS[name], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed)
    )
    assert pipe.num_timesteps == STEPS
    return np.asarray(output_of(result))


@pytest.mark.parametrize("name", list(PIPELINES))
def test_tiny_pipeline_runs_and_is_deterministic(name: str):
    pipe = PIPELINES[name]()
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32

    out = _generate(pipe, name)
    assert out.shape == EXPECTED_SHAPES[name]
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0  # a decoded, non-constant image/video

    np.testing.assert_array_equal(_generate(pipe, name), out)  # same pipeline, same seed
    np.testing.assert_array_equal(_generate(PIPELINES[name](), name), out)  # rebuilt pipeline, same seed
    assert not np.array_equal(_generate(pipe, name, seed=1), out)  # the seed matters
