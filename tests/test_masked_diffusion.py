"""Masked discrete diffusion (samplers/masked.py, samplers/masked_scheduler.py, search/masked_chain.py) on a
tiny random transformers masked LM: every unmasking policy through diffusers' LLaDA2Pipeline (with our
stateless scheduler) and through our chain gives the same tokens for the same seed; parity with diffusers'
BlockRefinementScheduler where the rules coincide; the float64 Gumbel draw samples softmax(logits / T); the
policies' rules; search methods on the chain with exact NFE."""

import math

import numpy as np
import pytest
import torch
from diffusers import BlockRefinementScheduler, LLaDA2Pipeline
from tiny_text import counting_logits_fn, logits_fn

from samplers.masked import (
    POLICIES,
    BlockLayout,
    ConfidenceThreshold,
    EntropyBounded,
    LowConfidence,
    RandomOrder,
    ReMDM,
    StepInputs,
    make_policy,
    owed_commits,
    sample_candidates,
)
from samplers.masked_scheduler import MaskedDiffusionScheduler
from search import run_search
from search.chain import advance
from search.masked_chain import MaskedDiffusionChain

PROMPT = "a b c"
GEN, BLOCK, STEPS = 9, 4, 3  # prompt 3 + 9 generated = 12 positions = 3 blocks (the first mixes prompt);
# 3 steps for 4 masks: an uneven split (2, 1, 1)
OPTIONS = {"threshold": {"threshold": 0.3}, "entropy": {"gamma": 1.0}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


def pipeline(lm, policy: str) -> LLaDA2Pipeline:
    model, tok = lm
    options = OPTIONS.get(policy, {})
    scheduler = MaskedDiffusionScheduler(
        policy=policy, threshold=options.get("threshold", 0.95), entropy_bound=options.get("gamma", 0.5)
    )
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def chain_for(lm, policy: str, **kw) -> MaskedDiffusionChain:
    model, tok = lm
    kw = {"context": "window", "eos_stop": False, "steps_per_block": STEPS, **kw}
    return MaskedDiffusionChain(
        logits_fn(model),
        tok(PROMPT)["input_ids"],
        gen_length=GEN,
        mask_token_id=tok.mask_token_id,
        eos_token_id=tok.eos_token_id,
        block_length=BLOCK,
        policy=policy,
        policy_options=OPTIONS.get(policy),
        **kw,
    )


def run(chain: MaskedDiffusionChain, n: int, seed: int) -> torch.Tensor:
    state = advance(chain, chain.prior(n), generator=torch.Generator().manual_seed(seed))
    start = chain.layout.prompt_length
    return state.x[:, start : start + GEN]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_llada2_pipeline_with_our_scheduler_equals_our_chain(lm, policy, temperature):
    pipe = pipeline(lm, policy)
    threshold = OPTIONS.get(policy, {}).get("threshold", 0.95)
    outs = [
        pipe(
            prompt=[PROMPT] * 3,
            gen_length=GEN,
            block_length=BLOCK,
            num_inference_steps=STEPS,
            temperature=temperature,
            threshold=threshold,
            editing_threshold=None,
            eos_early_stop=False,
            generator=torch.Generator().manual_seed(seed),
            output_type="seq",
        ).sequences
        for seed in (0, 0, 1)
    ]
    chain = chain_for(lm, policy, temperature=temperature)
    ours = run(chain, 3, 0)
    assert torch.equal(outs[0], outs[1])  # same seed, same tokens
    assert torch.equal(ours, outs[0]), (ours, outs[0])
    assert not (ours == lm[1].mask_token_id).any()  # every position filled
    if temperature > 0:  # and another seed gives other tokens
        assert not torch.equal(outs[2], outs[0])
        assert torch.equal(run(chain, 3, 1), outs[2])


def test_low_confidence_matches_diffusers_block_refinement_where_the_rules_coincide(lm):
    """With the prompt filling whole blocks, diffusers' even split of the block over its steps is LLaDA's
    schedule; a threshold above 1 makes its rule pure top-k: the same commits as our low-confidence policy."""
    model, tok = lm
    prompt = "a b c d"  # exactly one block
    runs = []
    for scheduler in (BlockRefinementScheduler(), MaskedDiffusionScheduler(policy="low-confidence")):
        pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tok)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(prompt=prompt, gen_length=8, block_length=BLOCK, num_inference_steps=2,
                   temperature=0.0, threshold=1.5, editing_threshold=None, eos_early_stop=False,
                   output_type="seq")  # fmt: skip
        runs.append(out.sequences)
    assert torch.equal(runs[0], runs[1])


def test_the_scheduler_keeps_no_state_between_steps(lm):
    """Interleaving two runs on one scheduler object changes nothing (diffusers' keeps per-run state)."""
    model, tok = lm
    scheduler = MaskedDiffusionScheduler(policy="random")
    scheduler.set_timesteps(STEPS, block_length=BLOCK)
    logits = torch.randn(2, BLOCK, 31, generator=torch.Generator().manual_seed(0))
    block = torch.full((2, BLOCK), tok.mask_token_id)
    first = scheduler.step(
        logits, 0, block, mask_token_id=tok.mask_token_id, generator=torch.Generator().manual_seed(5)
    )
    scheduler.step(logits[:1, :2], 2, block[:1, :2], mask_token_id=tok.mask_token_id)  # another run and size
    again = scheduler.step(
        logits, 0, block, mask_token_id=tok.mask_token_id, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(first.prev_sample, again.prev_sample)
    assert first.transfer_index.sum(-1).tolist() == [2, 2]  # ceil(4 masks / 3 steps) per row
    with pytest.raises(ValueError, match="mask token"):
        scheduler.step(logits, 0, block)


# ------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_gumbel_draws_sample_the_tempered_softmax(temperature):
    """Chi-square goodness of fit of 20000 float64 Gumbel-max draws to softmax(logits / T)."""
    from scipy.stats import chisquare

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    draws, confidence = sample_candidates(
        logits.expand(20000, -1), temperature, torch.Generator().manual_seed(int(temperature * 10))
    )
    counts = torch.bincount(draws, minlength=5).double()
    expected = torch.softmax(logits.double() / temperature, -1) * 20000
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    torch.testing.assert_close(confidence, torch.softmax(logits.double(), -1)[draws])  # untempered p
    greedy, _ = sample_candidates(logits, 0.0)
    assert int(greedy) == 0


def test_owed_commits_is_lladas_even_split():
    """LLaDA's get_num_transfer_tokens: m // k per step, one more in the first m % k steps."""
    for masks in range(0, 13):
        for steps in range(1, 7):
            left, got = torch.tensor([masks]), []
            for s in range(steps):
                n = owed_commits(left, steps - s)
                got.append(int(n))
                left = left - n
            expected = [masks // steps + (1 if s < masks % steps else 0) for s in range(steps)]
            assert got == expected and int(left) == 0


def _inputs(confidence, owed=1, entropy=None):
    c = torch.tensor(confidence, dtype=torch.float64)
    candidates = torch.isfinite(c)
    return StepInputs(
        confidence=c,
        candidates=candidates,
        owed=torch.full((c.shape[0],), owed),
        entropy=torch.zeros_like(c) if entropy is None else torch.tensor(entropy, dtype=torch.float64),
        generator=torch.Generator().manual_seed(0),
    )


def test_policy_rules():
    inf = -math.inf
    low = LowConfidence().commit(_inputs([[0.2, 0.9, inf, 0.5]], owed=2))
    assert low.tolist() == [[False, True, False, True]]
    high = ConfidenceThreshold(0.3).commit(_inputs([[0.2, 0.9, inf, 0.5]], owed=1))
    assert high.tolist() == [[False, True, False, True]]  # both above 0.3
    floor = ConfidenceThreshold(0.95).commit(_inputs([[0.2, 0.9, inf, 0.5]], owed=1))
    assert floor.tolist() == [[False, True, False, False]]  # none above: the owed one, most confident
    bounded = EntropyBounded(gamma=1.0).commit(
        _inputs([[0.5, 0.5, 0.5, 0.5]], owed=1, entropy=[[0.6, 0.3, 0.2, 2.0]])
    )
    assert bounded.tolist() == [[False, True, True, False]]  # 0.2 + 0.3 <= 1 < 0.2 + 0.3 + 0.6
    assert make_policy("threshold", threshold=0.5) == ConfidenceThreshold(0.5)
    with pytest.raises(ValueError, match="unknown unmasking policy"):
        make_policy("oracle")


def test_random_order_commits_uniformly():
    counts = torch.zeros(6)
    g = torch.Generator().manual_seed(1)
    c = torch.ones(1, 6, dtype=torch.float64)
    for _ in range(3000):
        inputs = StepInputs(c, c.bool(), torch.tensor([2]), torch.zeros_like(c), g)
        counts += RandomOrder().commit(inputs)[0].double()
    assert counts.sum() == 6000
    assert np.all(np.abs(counts.numpy() / 6000 - 1 / 6) < 0.02)


def test_layout_follows_llada2_blocks():
    layout = BlockLayout(prompt_length=3, gen_length=9, block_length=4, steps_per_block=4)
    assert (layout.total_length, layout.num_blocks, layout.first_block, layout.steps) == (12, 3, 0, 12)
    assert layout.block_of_step(5) == (1, 1)
    late = BlockLayout(prompt_length=9, gen_length=4, block_length=4, steps_per_block=2)
    assert (late.total_length, late.first_block, late.steps) == (16, 2, 4)
    assert late.attention_mask(1).tolist() == [[1] * 13 + [0] * 3]


# -------------------------------------------------------------------------------------- chain + search


def test_full_context_chain_is_reproducible_and_fills_every_position(lm):
    chain = chain_for(lm, "random", context="full", temperature=1.0)
    a, b = run(chain, 4, 3), run(chain, 4, 3)
    assert torch.equal(a, b) and not (a == lm[1].mask_token_id).any()
    assert chain.budget.nfe <= 2 * 4 * chain.steps


def test_eos_freezes_a_row_and_decode_cuts_there(lm):
    model, tok = lm
    chain = chain_for(lm, "low-confidence", eos_stop=True, decode_fn=lambda ids: tok.batch_decode(ids))
    eos, mask = tok.eos_token_id, tok.mask_token_id
    tokens = chain.prior(2).x.clone()
    p = chain.layout.prompt_length
    tokens[0, p : p + 2] = torch.tensor([5, eos])  # row 0: a word, then EOS: finished
    tokens[1, p + 1] = eos  # row 1: EOS after a mask: not finished
    assert chain.finished(tokens).tolist() == [True, False]
    from samplers.state import SolverState
    from search.chain import ChainState

    state = ChainState(SolverState(x=tokens, step=0))
    stepped = chain.step(state, torch.Generator().manual_seed(0))
    assert torch.equal(stepped.x[0], tokens[0])  # frozen
    assert (stepped.x[1] != mask).sum() > (tokens[1] != mask).sum()
    assert chain.decode(tokens)[0] == "b [EOS]"


def test_renoise_remasks_to_the_schedule(lm):
    chain = chain_for(lm, "low-confidence", context="full")
    g = torch.Generator().manual_seed(0)
    state = advance(chain, chain.prior(2), generator=g)
    mask = lm[1].mask_token_id
    back = chain.renoise(state, 4, g)  # block 1, one of its 3 steps done: 4 - 2 masks left
    p = chain.layout.prompt_length
    assert back.step == 4 and torch.equal(back.x[:, :p], state.x[:, :p])
    block0, block1, block2 = (back.x[:, s : s + 4] == mask for s in (0, 4, 8))
    assert block0.sum() == 0 and block1.sum(-1).tolist() == [2, 2] and block2.sum(-1).tolist() == [4, 4]
    kept = back.x != mask
    assert torch.equal(back.x[kept], state.x[kept])  # only masking, no new tokens


class FirstTokenIs:
    """1 where the decoded text starts with ``word``: a reward the search can move on a random model."""

    modality = "text"

    def __init__(self, word):
        self.word = word

    def __call__(self, texts, prompts=None):
        return torch.tensor([float(t.split()[:1] == [self.word]) for t in texts])


@pytest.mark.parametrize("method", ["bon", "smc", "dts", "beam", "paths", "rbf"])
def test_search_methods_run_on_the_chain_with_exact_nfe(lm, method):
    model, tok = lm
    counted, rows = counting_logits_fn(model)
    chain = MaskedDiffusionChain(counted, tok(PROMPT)["input_ids"], gen_length=GEN,
                                 mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                                 block_length=BLOCK, steps_per_block=STEPS,
                                 policy="random", temperature=1.0, lookahead="sample",
                                 decode_fn=lambda ids: tok.batch_decode(ids))  # fmt: skip
    result = run_search(
        method, chain, FirstTokenIs("six"), particles=4, generator=torch.Generator().manual_seed(0)
    )
    assert result.nfe == sum(rows) > 0
    assert isinstance(result.samples, list) and all(isinstance(t, str) for t in result.samples)


# ------------------------------------------------------------------------------------------- ReMDM


def test_remdm_sigma_is_the_max_capped_schedule():
    remdm = ReMDM(eta=0.3)
    k = 5
    assert remdm.sigma(0, k) == 0.0 and remdm.sigma(k - 1, k) == 0.0  # nothing decoded yet; the last step
    for done in range(1, k - 1):
        alpha_t, alpha_s = done / k, (done + 1) / k
        assert remdm.sigma(done, k) == pytest.approx(min(0.3, (1 - alpha_s) / alpha_t))
    with pytest.raises(ValueError, match="eta"):
        ReMDM(eta=1.5)


def test_remdm_conf_remasks_the_least_confident_tokens_first():
    decoded = torch.ones(20000, 4, dtype=torch.bool)
    confidence = torch.tensor([0.9, 0.5, 0.2, 0.99], dtype=torch.float64).expand(20000, -1)
    g = torch.Generator().manual_seed(0)
    cap = ReMDM(0.2, "cap").remask(decoded, confidence, 0.2, g).double().mean(0)
    conf = ReMDM(0.2, "conf").remask(decoded, confidence, 0.2, g).double().mean(0)
    torch.testing.assert_close(cap, torch.full((4,), 0.2, dtype=torch.float64), atol=0.01, rtol=0)
    expected = 0.2 * 4 * torch.softmax(-confidence[0], -1)  # the same expected count, by softmax(-confidence)
    torch.testing.assert_close(conf, expected, atol=0.01, rtol=0)
    assert conf.argmax() == 2 and conf.argmin() == 3


@pytest.mark.parametrize("strategy", ["cap", "conf"])
def test_remdm_in_the_pipeline_equals_our_chain_and_revises_tokens(lm, strategy):
    model, tok = lm
    steps = 6  # more steps than the 4 tokens of a block: room to remask and decode again
    scheduler = MaskedDiffusionScheduler(policy="low-confidence", remask_eta=0.5, remask_strategy=strategy)
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=[PROMPT] * 4, gen_length=GEN, block_length=BLOCK, num_inference_steps=steps,
               temperature=0.8, editing_threshold=None, eos_early_stop=False,
               generator=torch.Generator().manual_seed(0), output_type="seq").sequences  # fmt: skip
    remdm = ReMDM(0.5, strategy)
    chain = chain_for(lm, "low-confidence", temperature=0.8, steps_per_block=steps, remasking=remdm)
    assert torch.equal(run(chain, 4, 0), out)
    assert not (out == tok.mask_token_id).any()
    plain = chain_for(lm, "low-confidence", temperature=0.8, steps_per_block=steps)
    assert not torch.equal(run(plain, 4, 0), out)  # remasking changed the run


@pytest.mark.parametrize("context", ["full", "window"])
def test_predict_makes_no_call_when_nothing_is_left_to_fill(lm, context):
    chain = chain_for(lm, "low-confidence", context=context)
    p = chain.layout.prompt_length
    tokens = chain.prior(2).x.clone()
    tokens[:, p : p + GEN] = 5  # every generated position decoded (padding after it may stay masked)
    from samplers.state import SolverState
    from search.chain import ChainState

    state = ChainState(SolverState(x=tokens, step=STEPS))  # block 1
    same, lookahead = chain.predict(state)
    assert chain.budget.nfe == 0 and same.cached is None and torch.equal(lookahead, tokens)
    tokens[1, p + 3] = lm[1].mask_token_id  # one masked position in block 1 (in both views)
    _, lookahead = chain.predict(ChainState(SolverState(x=tokens, step=STEPS)))
    assert chain.budget.nfe == 2 and lookahead[1, p + 3] != lm[1].mask_token_id
