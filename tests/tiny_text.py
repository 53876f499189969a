"""A tiny random masked language model and word-level tokenizer, built in code, for the text-diffusion tests:
``transformers.BertForMaskedLM`` (bidirectional; accepts ``attention_mask`` and ``position_ids`` as
diffusers' ``LLaDA2Pipeline`` passes them) and a tokenizer with ``[MASK]``, ``[EOS]``, ``[PAD]``."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

SPECIALS = ("[PAD]", "[UNK]", "[MASK]", "[EOS]")
WORDS = "a b c d e f g h i j k l one two three four five six seven eight nine zero sort copy add = :".split()
SEED = 0


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", eos_token="[EOS]"
    )


def tiny_masked_lm(vocab_size: int | None = None) -> BertForMaskedLM:
    """2 layers, width 32, random weights (seeded), eval mode. Initialised with standard deviation 0.5 instead
    of BERT's 0.02, so that predictions depend on the context (changing one token changes about a third of
    the other positions' argmax; BERT's own init predicts the same token everywhere) and confidences spread
    over (0, 1)."""
    config = BertConfig(
        vocab_size=vocab_size or len(SPECIALS) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.5,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return BertForMaskedLM(config).eval()


def logits_fn(model):
    """The chain's ``logits_fn`` for a transformers masked LM."""

    def logits(input_ids, attention_mask, position_ids):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    return logits


def counting_logits_fn(model):
    """(``logits_fn`` for ``model``, the list of each call's row count): an independent NFE count."""
    rows: list[int] = []
    inner = logits_fn(model)

    def logits(input_ids, attention_mask, position_ids):
        rows.append(input_ids.shape[0])
        return inner(input_ids, attention_mask, position_ids)

    return logits, rows


class WordCount:
    """How often ``word`` occurs in each text: a reward a random model can move (``tiny_text:WordCount``)."""

    modality = "text"

    def __init__(self, word: str = "f"):
        self.word = word

    def __call__(self, texts, prompts=None):
        return torch.tensor([float(t.split().count(self.word)) for t in texts])
