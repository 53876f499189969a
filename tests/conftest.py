import pytest
import torch

from samplers import DiscreteVPSchedule
from samplers.analytic import GaussianMixture


@pytest.fixture(scope="session")
def gmm() -> GaussianMixture:
    """The 32-dimensional, 4-component, 2-class anisotropic Gaussian mixture used across solver tests."""
    return GaussianMixture.random(dim=32, n_components=4, n_classes=2, seed=0)


@pytest.fixture(scope="session")
def gmm2() -> GaussianMixture:
    """A 2-D, 3-component mixture: the search tests' target (small enough for exact tilted references)."""
    return GaussianMixture.random(dim=2, n_components=3, n_classes=1, seed=1)


@pytest.fixture(scope="session")
def schedule() -> DiscreteVPSchedule:
    """Stable Diffusion's discrete VP schedule (scaled_linear betas)."""
    return DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def tiny_lm():
    """A tiny random masked LM (``BertForMaskedLM``) and its word-level tokenizer (tests/tiny_text.py)."""
    from tiny_text import tiny_masked_lm, tiny_tokenizer

    return tiny_masked_lm(), tiny_tokenizer()


@pytest.fixture
def one_torch_thread():
    """Run the test with one intra-op torch thread (tests/threads.py): ``pytestmark = usefixtures(...)``."""
    from threads import one_thread

    with one_thread():
        yield
