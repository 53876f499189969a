"""The Reward base: input checking and conversion, batching, gradients only when asked, dtypes and devices."""

import numpy as np
import pytest
import torch
from PIL import Image

from rewards import Reward, RewardProtocol
from rewards.analytic import linear_reward
from rewards.compressibility import JPEGCompressibility
from rewards.inputs import as_batch, as_prompts
from rewards.video import MotionMagnitude


class MeanBrightness(Reward):
    """A differentiable test reward that records the size of every chunk it is given."""

    modality = "image"
    differentiable = True
    scale = "mean pixel value in [0, 1]"

    def __init__(self, batch_size: int = 32):
        super().__init__(batch_size=batch_size)
        self.chunks: list[int] = []

    def score(self, samples, prompts):
        self.chunks.append(len(samples))
        return samples.flatten(1).mean(1)


def test_rewards_satisfy_the_protocol():
    for reward in (MeanBrightness(), JPEGCompressibility(), MotionMagnitude(), linear_reward(torch.ones(3))):
        assert isinstance(reward, RewardProtocol)
        assert reward.modality in ("image", "video", "text", "vector")
        assert isinstance(reward.differentiable, bool) and reward.scale


def test_batching_splits_into_chunks_and_keeps_order():
    x = torch.rand(10, 3, 4, 4)
    small, whole = MeanBrightness(batch_size=3), MeanBrightness(batch_size=100)
    torch.testing.assert_close(small(x), whole(x), rtol=0, atol=0)
    assert small.chunks == [3, 3, 3, 1] and whole.chunks == [10]
    torch.testing.assert_close(small(x), x.flatten(1).mean(1))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_size_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="batch_size"):
        MeanBrightness(batch_size=bad)


def test_no_graph_unless_asked():
    reward = MeanBrightness()
    x = torch.rand(2, 3, 4, 4)
    assert reward(x).grad_fn is None
    x.requires_grad_(True)
    out = reward(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 48))
    assert reward(x, grad=False).grad_fn is None
    with torch.no_grad():
        assert reward(x).grad_fn is None


def test_grad_on_a_non_differentiable_reward_is_an_error():
    with pytest.raises(ValueError, match="not differentiable"):
        JPEGCompressibility()(torch.rand(1, 3, 8, 8), grad=True)
    # asked implicitly (input requires grad): scored without a graph, no error
    assert JPEGCompressibility()(torch.rand(1, 3, 8, 8, requires_grad=True)).grad_fn is None


def test_output_dtype_follows_float64_input_else_float32():
    reward = MeanBrightness()
    assert reward(torch.rand(2, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64
    assert reward(torch.rand(2, 3, 4, 4, dtype=torch.float16)).dtype == torch.float32


def test_pil_and_numpy_inputs_equal_the_tensor_input():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 6, 5, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    reward = MeanBrightness()
    expected = reward(tensor)
    torch.testing.assert_close(reward([Image.fromarray(p) for p in pixels]), expected)
    torch.testing.assert_close(reward(pixels.astype(np.float32) / 255), expected)
    grey = as_batch([Image.fromarray(pixels[0, :, :, 0])], "image")
    assert grey.shape == (1, 1, 6, 5)


def test_video_inputs_pil_lists_and_arrays():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(2, 4, 6, 5, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).float() / 255
    frames = [[Image.fromarray(f) for f in video] for video in pixels]
    torch.testing.assert_close(as_batch(frames, "video"), tensor)
    torch.testing.assert_close(as_batch(pixels.astype(np.float32) / 255, "video"), tensor)


@pytest.mark.parametrize(
    ("samples", "modality", "error", "match"),
    [
        (torch.rand(3, 8, 8), "image", ValueError, r"\(B, C, H, W\).*x\[None\]"),
        (torch.rand(2, 4, 8, 8), "image", ValueError, "C = 1 or 3"),
        (torch.rand(0, 3, 8, 8), "image", ValueError, "empty"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, "image", ValueError, r"\[0, 1\].*\(x \+ 1\) / 2"),
        (torch.full((1, 3, 2, 2), float("nan")), "image", ValueError, "finite"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "image", TypeError, "x.float"),
        ([], "image", ValueError, "empty"),
        ("not an image", "image", TypeError, "float tensor"),
        ([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))], "image", ValueError, "one size"),
        (np.zeros((2, 3, 8, 8), np.float32), "video", ValueError, "channels last"),
        (torch.rand(2, 3, 8, 8), "video", ValueError, r"\(B, T, C, H, W\)"),
        (torch.rand(2, 0, 3, 8, 8), "video", ValueError, "empty"),
        ([], "text", ValueError, "empty"),
        (["ok", 3], "text", TypeError, "strings"),
        (torch.rand(3), "vector", ValueError, r"\(B, d\)"),
        (torch.zeros(0, 3), "vector", ValueError, "empty"),
    ],
)
def test_bad_input_gives_a_clear_error(samples, modality, error, match):
    with pytest.raises(error, match=match):
        as_batch(samples, modality)


def test_values_just_outside_the_unit_interval_are_clamped_not_refused():
    x = torch.rand(2, 3, 4, 4)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -1e-7, 1 + 1e-7
    out = as_batch(x, "image")
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_prompts_are_broadcast_or_checked():
    assert as_prompts(None, 3) is None
    assert as_prompts("a cat", 2) == ["a cat", "a cat"]
    with pytest.raises(ValueError, match="2 prompts for 3 samples"):
        as_prompts(["a", "b"], 3)
    with pytest.raises(TypeError, match="prompts"):
        as_prompts([1, 2], 2)


def test_a_reward_that_needs_prompts_says_so():
    class NeedsPrompts(MeanBrightness):
        needs_prompts = True

    with pytest.raises(ValueError, match="needs one prompt per sample"):
        NeedsPrompts()(torch.rand(1, 3, 4, 4))
    assert NeedsPrompts()(torch.rand(2, 3, 4, 4), "a prompt").shape == (2,)


def test_scores_return_to_the_samples_device_and_weights_stay_put():
    reward = linear_reward(torch.tensor([1.0, 2.0]))
    x = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    torch.testing.assert_close(reward(x), torch.tensor([3.0, -2.0]))
    assert reward.device == torch.device("cpu")


def test_every_registered_name_resolves_to_a_reward_constructor():
    from rewards.registry import REWARD_NAMES, load_reward, reward_constructor

    for name in REWARD_NAMES:
        assert callable(reward_constructor(name))
    reward = load_reward("JPEG_Compressibility", quality=90)
    assert isinstance(reward, JPEGCompressibility) and reward.quality == 90
    assert load_reward("digits", target=3).target == 3
    assert load_reward("digits-classifier", target=5).target == 5  # an alias
    with pytest.raises(ValueError, match="known rewards: aesthetic, classifier"):
        load_reward("no-such-reward")
    by_path = load_reward("rewards.compressibility:JPEGCompressibility", quality=80)
    assert isinstance(by_path, JPEGCompressibility) and by_path.quality == 80
    with pytest.raises(ValueError, match="cannot import reward 'rewards.compressibility:Nope'"):
        load_reward("rewards.compressibility:Nope")


def test_every_exported_name_resolves():
    import rewards

    for name in rewards.__all__:
        assert getattr(rewards, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        rewards.NoSuchReward  # noqa: B018
