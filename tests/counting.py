"""Test helpers for search: an NFE count taken by wrapping the network (independent of the chain's own
accounting), and a reward whose scores the test sets."""

import contextlib

import torch

from rewards import Reward
from samplers.denoiser import Denoiser


class RowCounter:
    """Wraps a network and counts the rows (particles) it is called on."""

    def __init__(self, net):
        self.net, self.rows = net, 0

    def __call__(self, x, t, **kw):
        self.rows += x.shape[0]
        return self.net(x, t, **kw)


def count_model_rows(chain) -> RowCounter:
    """Give the chain a denoiser whose network counts rows (no guidance); return the counter."""
    counter = RowCounter(chain.denoiser.net)
    chain.denoiser = Denoiser(counter, chain.denoiser.prediction_type)
    return counter


class Scripted(Reward):
    """Scores set per row: ``values[i]`` for row i of each call (or one value for all); records what it
    scored in ``seen``."""

    modality = "vector"
    scale = "scripted"

    def __init__(self, values):
        super().__init__(batch_size=1 << 20)
        self.values = torch.as_tensor(values, dtype=torch.float64)
        self.seen = []

    def score(self, samples, prompts):
        self.seen.append(samples.clone())
        if self.values.ndim == 0:
            return self.values.expand(len(samples)).clone()
        return self.values[: len(samples)].clone()


class Brightness(Reward):
    """Mean pixel value of images (B, C, H, W) or videos (B, F, C, H, W) in [0, 1]: a reward that even a
    tiny random pipeline can move."""

    modality = "image"
    differentiable = True
    scale = "mean pixel value in [0, 1]"

    def score(self, samples, prompts):
        return samples.flatten(1).mean(1)


class VideoBrightness(Brightness):
    modality = "video"


@contextlib.contextmanager
def counting_rows(pipe):
    """Count the rows of every transformer call of ``pipe`` (a forward pre-hook, independent of any budget);
    yields a one-element list holding the count."""
    rows = [0]

    def hook(module, args, kwargs):
        rows[0] += kwargs["hidden_states"].shape[0]

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()
