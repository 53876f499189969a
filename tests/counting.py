"""Test helper: an NFE count taken by wrapping the network, independent of the chain's own accounting."""

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
