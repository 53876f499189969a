"""Resampling for particle methods (search.resample): unbiasedness, variance, exact properties, errors.

The statistical tests draw 20000 independent resamplings in one call through the row-batched cores in
``search.resample._ROW_RESAMPLERS``; :func:`test_public_resamplers_are_the_row_cores` checks that each public
resampler returns exactly its core's row for the same generator state, so those draws are the public schemes.
"""

from __future__ import annotations

import math

import pytest
import torch

from search.resample import (
    _ROW_RESAMPLERS,
    RESAMPLERS,
    _scaled_weights,
    effective_sample_size,
    get_resampler,
    multinomial,
    normalise_log_weights,
    residual,
    stratified,
    systematic,
)

F64 = torch.float64
NAMES = ["multinomial", "systematic", "stratified", "residual"]
LOW_VARIANCE = ["systematic", "stratified", "residual"]
SORTED = ["systematic", "stratified", "residual"]
DRAWS = 20_000
NUMS = [7, 11]  # num = N and num != N
# 7 uneven weights (sum 1): one tiny (0.002), one exactly zero (log weight -inf); no num * w is an integer
WEIGHTS = torch.tensor([0.30, 0.05, 0.002, 0.25, 0.0, 0.20, 0.198], dtype=F64)
LOG_W = WEIGHTS.log()
ZERO = 4
NINF = float("-inf")


def _counts(indices: torch.Tensor, n: int) -> torch.Tensor:
    """Offspring counts ``(B, n)`` (float64) from ancestor indices ``(B, num)``."""
    ones = torch.ones_like(indices, dtype=F64)
    return torch.zeros(indices.shape[0], n, dtype=F64).scatter_add_(1, indices, ones)


def _draw_rows(name: str, log_w: torch.Tensor, num: int, draws: int, seed: int) -> torch.Tensor:
    """``draws`` independent resamplings of the same weights: ancestor indices ``(draws, num)``."""
    scaled = _scaled_weights(log_w.to(F64)[None].expand(draws, -1), num)
    return _ROW_RESAMPLERS[name](scaled, num, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def counts() -> dict[tuple[str, int], torch.Tensor]:
    """Offspring counts ``(DRAWS, 7)`` of every resampler on ``WEIGHTS``, for each num in ``NUMS``."""
    out = {}
    for seed, (name, num) in enumerate((name, num) for name in NAMES for num in NUMS):
        idx = _draw_rows(name, LOG_W, num, DRAWS, seed=1000 + seed)
        assert idx.shape == (DRAWS, num) and idx.dtype == torch.long
        out[name, num] = _counts(idx, len(WEIGHTS))
    return out


# ----------------------------------------------------------------------------------------------------------
# the public functions are the cores


@pytest.mark.parametrize("name", NAMES)
def test_public_resamplers_are_the_row_cores(name):
    fn = RESAMPLERS[name]
    cases = [(LOG_W, 7), (LOG_W, 11), (LOG_W, 1), (torch.randn(13, dtype=F64) * 3, 5), (torch.zeros(4), 4)]
    for case, (log_w, num) in enumerate(cases):
        for seed in range(3):
            public = fn(log_w, num, torch.Generator().manual_seed(seed))
            core = _ROW_RESAMPLERS[name](
                _scaled_weights(log_w.to(F64)[None], num), num, torch.Generator().manual_seed(seed)
            )[0]
            assert torch.equal(public, core), (case, seed)
            assert public.shape == (num,) and public.dtype == torch.long


# ----------------------------------------------------------------------------------------------------------
# statistics over DRAWS resamplings


@pytest.mark.parametrize("num", NUMS)
@pytest.mark.parametrize("name", NAMES)
def test_unbiased_offspring_counts(counts, name, num):
    c = counts[name, num]
    assert torch.all(c.sum(1) == num)
    assert torch.all(c[:, ZERO] == 0), "a zero-weight (-inf) particle was selected"
    expected = num * WEIGHTS
    mean = c.mean(0)
    se = c.std(0) / math.sqrt(DRAWS)  # empirical standard error of the mean count
    # every non-zero weight has a non-integer num * w_i here, so each count really varies (se > 0), the tiny
    # particle included; a zero se would make the 5-se test vacuous
    positive = WEIGHTS > 0
    assert torch.all(se[positive] > 0)
    z = (mean - expected).abs() / se.clamp(min=1e-300)
    assert torch.all(z[positive] < 5.0), f"{name} num={num}: z = {z.tolist()}"


def _var_and_se(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-particle sample variance of the counts and its standard error, sqrt((m4 - var^2) / n)."""
    centred = c - c.mean(0)
    var = centred.pow(2).mean(0)
    m4 = centred.pow(4).mean(0)
    return var, ((m4 - var**2).clamp(min=0) / c.shape[0]).sqrt()


@pytest.mark.parametrize("num", NUMS)
def test_multinomial_count_variance_matches_theory(counts, num):
    """Sanity check on the reference the variance ordering is measured against: Var = num w (1 - w)."""
    var, se = _var_and_se(counts["multinomial", num])
    theory = num * WEIGHTS * (1 - WEIGHTS)
    assert torch.all((var - theory).abs() <= 5 * se + 1e-12), f"{var.tolist()} vs {theory.tolist()}"


@pytest.mark.parametrize("num", NUMS)
@pytest.mark.parametrize("name", LOW_VARIANCE)
def test_variance_no_larger_than_multinomial(counts, name, num):
    var, se = _var_and_se(counts[name, num])
    var_multi, se_multi = _var_and_se(counts["multinomial", num])
    # per particle: <= multinomial up to 5 standard errors of the difference (for the tiny particle both
    # variances are ~ num * w and equal within noise)
    slack = 5 * (se**2 + se_multi**2).sqrt()
    assert torch.all(var <= var_multi + slack), f"{name} num={num}: {var.tolist()} vs {var_multi.tolist()}"
    # in total, by a wide margin on these weights (theory: systematic ~1.0, residual ~1.5 vs multinomial 5.3)
    assert var.sum() < 0.5 * var_multi.sum()


# ----------------------------------------------------------------------------------------------------------
# exact properties


def _random_cases(seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    cases = [(LOG_W, num) for num in NUMS]
    for n, num in [(1, 3), (2, 9), (5, 5), (16, 16), (16, 40), (50, 7)]:
        log_w = torch.randn(n, generator=g, dtype=F64) * 2
        if n > 2:
            log_w[torch.randperm(n, generator=g)[: n // 4]] = NINF
        cases.append((log_w, num))
    return cases


def test_residual_keeps_deterministic_copies(counts):
    for num in NUMS:
        floor = torch.floor(num * WEIGHTS)
        assert torch.all(counts["residual", num] >= floor)
    for case, (log_w, num) in enumerate(_random_cases()):
        floor = torch.floor(num * torch.softmax(log_w, 0))
        c = _counts(_draw_rows("residual", log_w, num, 500, seed=case), len(log_w))
        assert torch.all(c >= floor), case
        assert torch.all(c[:, torch.isneginf(log_w)] == 0)


def test_systematic_counts_are_floor_or_ceil(counts):
    for num in NUMS:
        x = num * WEIGHTS
        c = counts["systematic", num]
        assert torch.all((c == x.floor()) | (c == x.ceil()))
    for case, (log_w, num) in enumerate(_random_cases(1)):
        x = num * torch.softmax(log_w, 0)
        c = _counts(_draw_rows("systematic", log_w, num, 500, seed=case), len(log_w))
        # 1e-9 absorbs float64 rounding of num * w_i; no case here has num * w_i that close to an integer
        assert torch.all((c >= (x - 1e-9).floor()) & (c <= (x + 1e-9).ceil())), case


@pytest.mark.parametrize("name", SORTED)
def test_equal_weights_give_each_index_once(name):
    fn = RESAMPLERS[name]
    for n in [1, 2, 5, 7, 64]:
        for log_w in (torch.zeros(n), torch.full((n,), 3.7, dtype=F64), torch.full((n,), -250.0)):
            for seed in range(5):
                out = fn(log_w, generator=torch.Generator().manual_seed(seed))
                assert torch.equal(out, torch.arange(n)), (n, seed, out)


@pytest.mark.parametrize("name", SORTED)
def test_sorted_output(name):
    for case, (log_w, num) in enumerate(_random_cases(2)):
        out = RESAMPLERS[name](log_w, num, torch.Generator().manual_seed(case))
        assert torch.all(out[1:] >= out[:-1]), case


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_but_valid_inputs(name):
    fn = RESAMPLERS[name]
    g = torch.Generator().manual_seed(0)
    assert torch.equal(fn(torch.tensor([1.5]), generator=g), torch.tensor([0]))  # a single particle
    assert torch.equal(fn(torch.tensor([-2.0]), 4, g), torch.zeros(4, dtype=torch.long))
    for hot in range(3):  # one particle carries all the weight, wherever it sits
        log_w = torch.full((3,), NINF)
        log_w[hot] = 0.0
        assert torch.equal(fn(log_w, 5, g), torch.full((5,), hot))
    # a weight that underflows to zero in float64 (relative e^-800) is never selected either
    assert torch.all(fn(torch.tensor([0.0, -800.0], dtype=F64), 50, g) == 0)
    # float32 / float16 / integer log weights are accepted; the result is on the input's device
    for log_w in (LOG_W.float(), LOG_W.half(), torch.tensor([0, 1, 2])):
        out = fn(log_w, 9, g)
        assert out.shape == (9,) and out.dtype == torch.long and out.device == log_w.device


# ----------------------------------------------------------------------------------------------------------
# reproducibility and num


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_with_seeded_generator(name):
    fn = RESAMPLERS[name]
    log_w = torch.randn(20, generator=torch.Generator().manual_seed(3))
    runs = [fn(log_w, 20, torch.Generator().manual_seed(42)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    # and the generator really drives the randomness: other seeds give other draws
    others = [fn(log_w, 20, torch.Generator().manual_seed(s)) for s in range(5)]
    assert any(not torch.equal(o, runs[0]) for o in others)


@pytest.mark.parametrize("num", [1, 3, 7, 25])
@pytest.mark.parametrize("name", NAMES)
def test_num_different_from_n(name, num):
    out = RESAMPLERS[name](LOG_W, num, torch.Generator().manual_seed(num))
    assert out.shape == (num,) and out.dtype == torch.long
    assert torch.all((out >= 0) & (out < len(LOG_W)) & (out != ZERO))


# ----------------------------------------------------------------------------------------------------------
# ESS and normalisation


def test_effective_sample_size():
    assert effective_sample_size(torch.zeros(10)) == pytest.approx(10.0, rel=1e-12)
    assert effective_sample_size(torch.full((5,), -1e3)) == pytest.approx(5.0, rel=1e-12)
    one_hot = torch.tensor([NINF, 0.0, NINF, NINF])
    assert effective_sample_size(one_hot) == pytest.approx(1.0, rel=1e-12)
    # weights proportional to (1, 1, 2): w = (1/4, 1/4, 1/2), 1 / sum w^2 = 1 / 0.375 = 8/3
    log_w = torch.tensor([1.0, 1.0, 2.0], dtype=F64).log()
    assert effective_sample_size(log_w.float()) == pytest.approx(8 / 3, rel=1e-6)
    assert effective_sample_size(log_w) == pytest.approx(8 / 3, rel=1e-12)
    assert effective_sample_size(log_w + 500.0) == pytest.approx(8 / 3, rel=1e-12)  # shift-invariant
    assert effective_sample_size(LOG_W) == pytest.approx(1 / float((WEIGHTS**2).sum()), rel=1e-12)
    assert isinstance(effective_sample_size(LOG_W), float)


def test_normalise_log_weights():
    log_w = torch.tensor([1.0, 1.0, 2.0, 0.0]).log() + 7.0  # the last weight is zero
    normalised, log_mean = normalise_log_weights(log_w)
    assert normalised.dtype == F64 and log_mean.dtype == F64 and log_mean.ndim == 0
    torch.testing.assert_close(normalised.exp(), torch.tensor([0.25, 0.25, 0.5, 0.0], dtype=F64))
    assert torch.isneginf(normalised[3])
    assert float(torch.logsumexp(normalised, 0)) == pytest.approx(0.0, abs=1e-12)
    assert float(log_mean) == pytest.approx(7.0, abs=1e-6)  # mean weight e^7 (1 + 1 + 2 + 0) / 4 = e^7
    _, log_mean = normalise_log_weights(torch.tensor([0.0, math.log(3.0)], dtype=F64))
    assert float(log_mean) == pytest.approx(math.log(2.0), abs=1e-12)


# ----------------------------------------------------------------------------------------------------------
# errors

CHECKED = [*RESAMPLERS.values(), effective_sample_size, normalise_log_weights]


@pytest.mark.parametrize("fn", CHECKED, ids=lambda f: f.__name__)
def test_invalid_log_weights(fn):
    nan = float("nan")
    with pytest.raises(ValueError, match="2 NaN"):
        fn(torch.tensor([0.0, nan, 1.0, nan]))
    with pytest.raises(ValueError, match="1 NaN"):
        fn(torch.tensor([NINF, nan]))  # NaN is reported before anything else
    with pytest.raises(ValueError, match="every particle has zero weight"):
        fn(torch.full((3,), NINF))
    with pytest.raises(ValueError, match=r"\+inf"):
        fn(torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="empty"):
        fn(torch.tensor([]))
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.tensor(0.0))
    with pytest.raises(TypeError, match="real"):
        fn(torch.zeros(3, dtype=torch.complex64))


@pytest.mark.parametrize("fn", RESAMPLERS.values(), ids=lambda f: f.__name__)
def test_invalid_num(fn):
    for num in (0, -3):
        with pytest.raises(ValueError, match="num must be a positive"):
            fn(torch.zeros(3), num)
    with pytest.raises(TypeError):
        fn(torch.zeros(3), 2.5)


def test_get_resampler():
    assert get_resampler("systematic") is systematic
    assert get_resampler(" Residual ") is residual
    assert {name: get_resampler(name) for name in NAMES} == RESAMPLERS
    assert RESAMPLERS == {
        "multinomial": multinomial,
        "systematic": systematic,
        "stratified": stratified,
        "residual": residual,
    }

    def custom(log_weights, num=None, generator=None):
        return torch.zeros(num or len(log_weights), dtype=torch.long)

    assert get_resampler(custom) is custom
    with pytest.raises(ValueError, match="unknown resampler 'sytematic'.*multinomial, residual, stratified"):
        get_resampler("sytematic")
    with pytest.raises(TypeError, match="name or callable"):
        get_resampler(3)
