"""Search over text in diffusers' LLaDA2Pipeline (SearchPipeline + pipelines/text.py) on a tiny random
masked LM: without search it is the pipeline call; every method returns the pipeline's output type with NFE
equal to a count of model rows; prompts searched side by side equal one after another in fewer model calls;
a reward the random model can move is raised by SMC over best-of-1."""

import numpy as np
import pytest
import torch
from diffusers import LLaDA2Pipeline
from tiny_text import WordCount, tiny_masked_lm, tiny_tokenizer

from pipelines.search_pipeline import SearchPipeline, TextSearchOutput
from pipelines.text import adablock_for, text_chains
from samplers.masked_scheduler import MaskedDiffusionScheduler
from search.chain import advance
from search.registry import SEARCH_METHODS

CALL = {"gen_length": 8, "block_length": 4, "num_inference_steps": 4, "temperature": 1.0}
PROMPTS = ["a b c", "sort : one two"]


@pytest.fixture(scope="module")
def pipe():
    pipe = LLaDA2Pipeline(
        model=tiny_masked_lm(),
        scheduler=MaskedDiffusionScheduler(policy="low-confidence"),
        tokenizer=tiny_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ModelCalls:
    def __init__(self, model):
        self.model, self.rows, self.calls = model, 0, 0

    def hook(self, module, args, kwargs):
        self.rows += (args[0] if args else kwargs["input_ids"]).shape[0]
        self.calls += 1

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self.hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_without_search_it_is_the_pipeline_call(pipe):
    ours = SearchPipeline.from_pipeline(pipe, search=None)(
        PROMPTS[0], generator=torch.Generator().manual_seed(0), editing_threshold=None, **CALL
    )
    theirs = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), editing_threshold=None, **CALL)
    assert torch.equal(ours.sequences, theirs.sequences) and ours.texts == theirs.texts


def test_a_chain_runs_the_pipelines_tokens(pipe):
    chain = text_chains(pipe, [PROMPTS[0]], **CALL)[0]
    state = advance(chain, chain.prior(1), generator=torch.Generator().manual_seed(4))
    out = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(4), editing_threshold=None,
               output_type="seq", **CALL)  # fmt: skip
    p = chain.layout.prompt_length
    assert torch.equal(state.x[:, p : p + CALL["gen_length"]], out.sequences)


@pytest.mark.parametrize("method", [m for m in SEARCH_METHODS if m not in ("zero-order", "evo")])
def test_every_method_returns_texts_with_nfe_equal_to_model_rows(pipe, method):
    search = SearchPipeline.from_pipeline(pipe, search=method, reward=WordCount(), particles=3)
    with ModelCalls(pipe.model) as counted:
        out = search(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in (0, 1)], **CALL)
    assert isinstance(out, TextSearchOutput)
    assert out.sequences.shape == (2, CALL["gen_length"]) and len(out.texts) == 2
    assert all(isinstance(t, str) for t in out.texts)
    assert counted.rows == sum(out.nfe) > 0
    assert [float(WordCount()([t])[0]) for t in out.texts] == pytest.approx(out.scores)


def test_side_by_side_equals_one_after_another_in_fewer_calls(pipe):
    runs = {}
    for batched in (True, False):
        search = SearchPipeline.from_pipeline(pipe, "smc", WordCount(), particles=4, batch_prompts=batched)
        with ModelCalls(pipe.model) as counted:
            out = search(PROMPTS * 2, generator=torch.Generator().manual_seed(7), **CALL)
        runs[batched] = (out, counted.calls)
    (side, side_calls), (alone, alone_calls) = runs[True], runs[False]
    assert torch.equal(side.sequences, alone.sequences) and side.nfe == alone.nfe
    assert side_calls < alone_calls


def test_smc_raises_the_reward_over_best_of_1(pipe):
    smc, single = [], []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        smc += SearchPipeline.from_pipeline(pipe, "smc", WordCount(), particles=8)(
            PROMPTS[0], generator=g, **CALL
        ).scores
        g = torch.Generator().manual_seed(seed)
        single += SearchPipeline.from_pipeline(pipe, "bon", WordCount(), particles=1)(
            PROMPTS[0], generator=g, **CALL
        ).scores
    assert np.mean(smc) > np.mean(single) + 0.5, (smc, single)


def test_bad_text_arguments_fail_clearly(pipe):
    for method in ("zero-order", "evo"):
        with pytest.raises(ValueError, match="initial Gaussian noise"):
            SearchPipeline.from_pipeline(pipe, method, WordCount())(PROMPTS[0], **CALL)
    with pytest.raises(ValueError, match="random steps"):
        SearchPipeline.from_pipeline(pipe, "smc", WordCount())(PROMPTS[0], **{**CALL, "temperature": 0.0})
    search = SearchPipeline.from_pipeline(pipe, "smc", WordCount())
    with pytest.raises(ValueError, match="not supported"):
        search(PROMPTS[0], top_p=0.9, **CALL)
    with pytest.raises(ValueError, match="output_type"):
        search(PROMPTS[0], output_type="pil-ish", **CALL)
    plain = SearchPipeline(pipe, None, WordCount())
    with pytest.raises(ValueError, match="adaptive_blocks needs a search"):
        plain(PROMPTS[0], adaptive_blocks=adablock_for(pipe.tokenizer), **CALL)
