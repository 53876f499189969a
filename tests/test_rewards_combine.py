"""Combinators (weighted sum, z-score, rank, category weights) and video rewards."""

import pytest
import torch

from rewards import Reward
from rewards.analytic import linear_reward
from rewards.combine import CategoryWeighted, Rank, WeightedSum, ZScore
from rewards.compressibility import JPEGCompressibility
from rewards.video import FrameAggregate, MotionMagnitude, TemporalConsistency

F64 = torch.float64


@pytest.fixture
def two_linear():
    return tuple(linear_reward(w) for w in torch.eye(2, dtype=F64))


def test_weighted_sum_by_name_and_by_position(two_linear):
    a, b = two_linear
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    by_name = WeightedSum({"a": a, "b": b}, {"a": 2.0, "b": -0.5})
    torch.testing.assert_close(by_name(x), 2 * x[:, 0] - 0.5 * x[:, 1])
    torch.testing.assert_close(WeightedSum([a, b], [1.0, 3.0])(x), x[:, 0] + 3 * x[:, 1])
    torch.testing.assert_close(WeightedSum([a, b])(x), x.sum(1))
    with pytest.raises(ValueError, match="unknown rewards"):
        WeightedSum({"a": a}, {"c": 1.0})
    with pytest.raises(ValueError, match="2 weights for 1 rewards"):
        WeightedSum([a], [1.0, 2.0])
    with pytest.raises(ValueError, match="different modalities"):
        WeightedSum([a, JPEGCompressibility()])


def test_weighted_sum_is_differentiable_when_all_parts_are(two_linear):
    a, b = two_linear
    x = torch.tensor([[1.0, 2.0]], dtype=F64, requires_grad=True)
    combined = WeightedSum([a, b], [2.0, 3.0])
    assert combined.differentiable
    (grad,) = torch.autograd.grad(combined(x).sum(), x)
    torch.testing.assert_close(grad, torch.tensor([[2.0, 3.0]], dtype=F64))


def test_zscore_and_rank(two_linear):
    a, _ = two_linear
    x = torch.tensor([[4.0, 0], [1.0, 0], [1.0, 0], [10.0, 0]], dtype=F64)
    z = ZScore(a)(x)
    r = x[:, 0]
    torch.testing.assert_close(z, (r - r.mean()) / r.std(correction=0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(z.mean(), torch.tensor(0.0, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(Rank(a)(x), torch.tensor([2.0, 0.5, 0.5, 3.0], dtype=F64) / 3)
    assert ZScore(a)(x[:1]).item() == 0.0 and Rank(a)(x[:1]).item() == 0.5
    assert ZScore(a).differentiable and not Rank(a).differentiable


def test_category_weighted_uses_each_prompts_category(two_linear):
    a, b = two_linear
    reward = CategoryWeighted(
        {"count": a, "color": b},
        weights={"counting": {"count": 1.0}, "colors": {"color": 2.0}, "other": {"count": 0.5, "color": 0.5}},
        category=lambda p: "counting" if "three" in p else ("colors" if "red" in p else "other"),
    )
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], dtype=F64)
    got = reward(x, ["three cats", "a red car", "a dog"])
    torch.testing.assert_close(got, torch.tensor([1.0, 4.0, 1.5], dtype=F64))
    with pytest.raises(ValueError, match="needs one prompt"):
        reward(x)


def test_category_mapping_default_and_errors(two_linear):
    a, b = two_linear
    weights = {"x": {"a": 1.0}, "y": {"b": 1.0}}
    by_dict = CategoryWeighted({"a": a, "b": b}, weights, category={"p1": "y"}, default="x")
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64)
    torch.testing.assert_close(by_dict(x, ["p1", "unlisted"]), torch.tensor([2.0, 1.0], dtype=F64))
    strict = CategoryWeighted({"a": a, "b": b}, weights, category={"p1": "y"})
    with pytest.raises(ValueError, match="no category"):
        strict(x, ["p1", "unlisted"])
    with pytest.raises(ValueError, match="unknown rewards"):
        CategoryWeighted({"a": a}, {"x": {"zzz": 1.0}}, category={})
    with pytest.raises(ValueError, match="default category"):
        CategoryWeighted({"a": a}, {"x": {"a": 1.0}}, category={}, default="nope")


class MeanPixel(Reward):
    modality = "image"
    differentiable = True
    scale = "mean pixel value"

    def score(self, samples, prompts):
        return samples.flatten(1).mean(1)


def _ramp_video(frames: int = 5) -> torch.Tensor:
    """(2, T, 3, 4, 4): video 0 brightens frame by frame, video 1 is constant 0.5."""
    ramp = torch.linspace(0, 1, frames).view(frames, 1, 1, 1).expand(frames, 3, 4, 4)
    return torch.stack([ramp, torch.full_like(ramp, 0.5)])


@pytest.mark.parametrize(("how", "expected"), [("mean", 0.5), ("min", 0.0), ("first-middle-last", 0.5)])
def test_frame_aggregate(how, expected):
    videos = _ramp_video()
    got = FrameAggregate(MeanPixel(), how)(videos)
    torch.testing.assert_close(got, torch.tensor([expected, 0.5]))


def test_frame_aggregate_first_middle_last_scores_three_frames():
    calls = []

    class Counting(MeanPixel):
        def score(self, samples, prompts):
            calls.append(len(samples))
            return super().score(samples, prompts)

    FrameAggregate(Counting(), "first-middle-last")(_ramp_video(9))
    assert sum(calls) == 2 * 3
    with pytest.raises(ValueError, match="needs an image reward"):
        FrameAggregate(MotionMagnitude())


def test_motion_magnitude_and_gradients():
    videos = _ramp_video(5)
    torch.testing.assert_close(MotionMagnitude()(videos), torch.tensor([0.25, 0.0]))
    # interior pixel values: gradcheck's finite differences must not step outside [0, 1]
    x = (0.25 + 0.5 * torch.rand(2, 3, 3, 2, 2, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: FrameAggregate(MeanPixel(), "min")(v), (x,))
    assert torch.autograd.gradcheck(lambda v: MotionMagnitude()(v), (x,))
    with pytest.raises(ValueError, match="at least 2 frames"):
        MotionMagnitude()(videos[:, :1])


class ColourEncoder(torch.nn.Module):
    """A stand-in image encoder: the mean colour, centred, as the embedding."""

    def encode_images(self, images):
        emb = images.mean((-2, -1)) - 0.5
        return emb / emb.norm(dim=-1, keepdim=True)


def test_temporal_consistency_is_one_for_a_static_video_and_lower_when_colours_flip():
    red = torch.zeros(3, 4, 4)
    red[0] = 1
    blue = torch.zeros(3, 4, 4)
    blue[2] = 1
    static = torch.stack([red] * 4)
    flipping = torch.stack([red, blue, red, blue])
    got = TemporalConsistency(ColourEncoder())(torch.stack([static, flipping]))
    cos = float(torch.nn.functional.cosine_similarity(red.mean((1, 2)) - 0.5, blue.mean((1, 2)) - 0.5, dim=0))
    torch.testing.assert_close(got, torch.tensor([1.0, cos]))


def test_gradcheck_of_temporal_consistency_and_normalised_sums():
    g = torch.Generator().manual_seed(4)
    videos = (0.2 + 0.6 * torch.rand(2, 3, 3, 2, 2, generator=g, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: TemporalConsistency(ColourEncoder())(v), (videos,))
    a, b = (linear_reward(w) for w in torch.randn(2, 3, generator=g, dtype=F64))
    x = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: WeightedSum([ZScore(a), ZScore(b)], [1.0, 0.5])(v), (x,))
