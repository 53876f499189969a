import pytest
import torch

from samplers.analytic import GaussianMixture


@pytest.fixture(scope="session")
def gmm() -> GaussianMixture:
    """The 32-dimensional, 4-component, 2-class anisotropic Gaussian mixture used across solver tests."""
    return GaussianMixture.random(dim=32, n_components=4, n_classes=2, seed=0)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
