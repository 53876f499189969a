"""SearchPipeline on tiny random SD, SDXL, SD3, Flux (true CFG), Wan, CogVideoX and AnimateDiff pipelines
with every search method: two prompts searched side by side in one call, the pipeline's output type and
shape, NFE equal to an independent count of UNet/transformer rows; and the same images whether the prompts
are searched side by side or one after another, the side-by-side run in half the network calls."""

import numpy as np
import pytest
import torch
from counting import Brightness, VideoBrightness
from tiny_pipelines import CALL_KWARGS, EXPECTED_SHAPES, PIPELINES, tiny_sd

from pipelines.search_pipeline import SearchPipeline
from search.registry import SEARCH_METHODS

STEPS = 3
PARTICLES = 2
PROMPTS = ["a cube", "a red ball"]
#: network rows per particle evaluation in CALL_KWARGS (all use classifier-free guidance)
CFG_ROWS = 2
VIDEO = ("wan", "cogvideox", "animatediff")


@pytest.fixture(scope="module", params=list(PIPELINES))
def case(request):
    name = request.param
    pipe = PIPELINES[name]()
    kwargs = {k: v for k, v in CALL_KWARGS[name].items() if k != "prompt"}
    return name, pipe, kwargs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class NetworkCalls:
    """Rows and calls of the pipeline's UNet / transformer, counted by a forward pre-hook."""

    def __init__(self, pipe):
        self.module = getattr(pipe, "unet", None) or pipe.transformer
        self.rows, self.calls, self.largest = 0, 0, 0

    def hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.rows += x.shape[0]
        self.calls += 1
        self.largest = max(self.largest, x.shape[0])

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self.hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def reward_for(name):
    return VideoBrightness() if name in VIDEO else Brightness()


@pytest.mark.parametrize("method", list(SEARCH_METHODS))
def test_every_method_on_every_pipeline(case, method):
    name, pipe, kwargs = case
    searcher = SearchPipeline.from_pipeline(pipe, search=method, reward=reward_for(name), particles=PARTICLES)
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    with NetworkCalls(pipe) as counted:
        out = searcher(PROMPTS, num_inference_steps=STEPS, generator=generators, **kwargs)
    expected = (len(PROMPTS), *EXPECTED_SHAPES[name][1:])
    images = out.frames if name in VIDEO else out.images
    assert isinstance(images, np.ndarray) and images.shape == expected and images.dtype == np.float32
    assert len(out.scores) == len(out.nfe) == len(out.history) == len(out.curves) == len(PROMPTS)
    assert counted.rows == CFG_ROWS * sum(out.nfe)  # the chains' NFE against the network's own count
    assert all(nfe >= STEPS for nfe in out.nfe)
    for curve, nfe in zip(out.curves, out.nfe, strict=True):
        assert curve and curve[-1][0] <= nfe
        assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(curve, curve[1:]))


@pytest.mark.parametrize("method", ["smc", "bon"])
def test_side_by_side_equals_one_after_another(case, method):
    """The same images, scores and NFE as searching the prompts one at a time, in fewer network calls."""
    name, pipe, kwargs = case
    kwargs = dict(kwargs, output_type="pt")
    runs = {}
    for batched in (True, False):
        searcher = SearchPipeline.from_pipeline(
            pipe, search=method, reward=reward_for(name), particles=PARTICLES, batch_prompts=batched
        )
        with NetworkCalls(pipe) as counted:
            runs[batched] = searcher(
                PROMPTS, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3), **kwargs
            )
        runs[batched].calls = counted.calls
    side, alone = runs[True], runs[False]
    torch.testing.assert_close(side.images, alone.images, atol=1e-4, rtol=0)
    np.testing.assert_allclose(side.scores, alone.scores, atol=1e-5)
    assert side.nfe == alone.nfe
    assert side.calls * 2 == alone.calls  # every call of the side-by-side run served both prompts


def test_max_batch_bounds_the_merged_calls_and_changes_nothing():
    """Three prompts x 4 particles side by side with max_batch=3: no UNet call above 3 particles (6 rows
    with CFG), the same images and NFE as without the bound."""
    pipe = tiny_sd()
    kwargs = {k: v for k, v in CALL_KWARGS["sd"].items() if k != "prompt"}
    prompts = [*PROMPTS, "a green cone"]
    runs = {}
    for max_batch in (None, 3):
        searcher = SearchPipeline.from_pipeline(pipe, "smc", Brightness(), particles=4, max_batch=max_batch)
        with NetworkCalls(pipe) as counted:
            generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
            out = searcher(prompts, num_inference_steps=STEPS, generator=generators, **kwargs)
        runs[max_batch] = (out, counted)
    (free, free_calls), (bounded, bounded_calls) = runs[None], runs[3]
    assert free_calls.largest == CFG_ROWS * 4 * len(prompts) and bounded_calls.largest == CFG_ROWS * 3
    assert bounded_calls.rows == free_calls.rows == CFG_ROWS * sum(free.nfe)
    assert bounded.nfe == free.nfe
    np.testing.assert_allclose(bounded.images, free.images, atol=1e-4)
