"""The Reward protocol and the base class every reward here is built on.

A reward scores a batch: ``reward(samples, prompts=None) -> Tensor[B]``, float, higher is better. It
declares its ``modality`` ("image", "video", "text" or "vector"), whether it is ``differentiable`` in the
samples, and its output ``scale`` (a sentence: the range and unit of the numbers it returns). Anything with
those three attributes and that call signature is a reward (:class:`RewardProtocol`); :class:`Reward` adds
the common machinery:

* input checking and conversion (:mod:`rewards.inputs`): tensors, NumPy arrays, PIL images, strings;
* internal batching (``batch_size`` samples per model call, settable per reward);
* gradients only when asked: with ``grad=None`` (the default) the graph is kept exactly when the samples
  are a tensor that requires grad and the reward is differentiable; otherwise scoring runs under
  ``no_grad``. ``grad=True`` on a non-differentiable reward is an error;
* device handling: samples move to the reward's device, scores come back on the samples' device, float32
  (float64 when the samples are float64, so ``torch.autograd.gradcheck`` can be used).

Subclasses implement :meth:`Reward.score` on one already-checked chunk.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .inputs import MODALITIES, as_batch, as_prompts

__all__ = ["Reward", "RewardProtocol"]


@runtime_checkable
class RewardProtocol(Protocol):
    """What search and pipelines rely on: a batch scorer with declared modality, differentiability, scale."""

    modality: str
    differentiable: bool
    scale: str

    def __call__(self, samples: Any, prompts: Any = None) -> torch.Tensor: ...


class Reward(nn.Module):
    """Base class: checks inputs, batches, handles gradients and devices; subclasses define :meth:`score`.

    Class attributes to set: ``modality``, ``differentiable``, ``scale``, and ``needs_prompts`` (True when a
    prompt per sample is required, e.g. CLIPScore without a fixed caption).
    """

    modality: str = "image"
    differentiable: bool = False
    scale: str = ""
    needs_prompts: bool = False

    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.batch_size = batch_size

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"batch_size must be a positive integer, got {value!r}")
        self._batch_size = value

    @property
    def device(self) -> torch.device | None:
        """Where the reward's weights live; None for rewards without weights (they follow the samples)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return None

    def score(self, samples: torch.Tensor | list[str], prompts: list[str] | None) -> torch.Tensor:
        """Scores (n,) of one checked chunk of at most ``batch_size`` samples on the reward's device."""
        raise NotImplementedError

    def forward(self, samples: Any, prompts: Any = None, *, grad: bool | None = None) -> torch.Tensor:
        """Score ``samples`` (see :mod:`rewards.inputs` for the accepted forms); one float per sample."""
        if self.modality not in MODALITIES:
            raise ValueError(f"{type(self).__name__}.modality must be one of {MODALITIES}")
        batch = as_batch(samples, self.modality)
        prompt_list = as_prompts(prompts, len(batch))
        if self.needs_prompts and prompt_list is None:
            raise ValueError(f"{type(self).__name__} needs one prompt per sample (or a single prompt string)")
        keep_graph = self._keep_graph(samples, grad)
        out_device = batch.device if isinstance(batch, torch.Tensor) else torch.device("cpu")
        out_dtype = torch.float64 if getattr(batch, "dtype", None) == torch.float64 else torch.float32
        with torch.set_grad_enabled(keep_graph):
            scores = self.score_batch(batch, prompt_list, keep_graph)
        if scores.shape != (len(batch),):
            raise RuntimeError(
                f"{type(self).__name__} returned scores of shape {tuple(scores.shape)} "
                f"for {len(batch)} samples"
            )
        return scores.to(device=out_device, dtype=out_dtype)

    def score_batch(
        self, batch: torch.Tensor | list[str], prompts: list[str] | None, keep_graph: bool
    ) -> torch.Tensor:
        """Scores of a whole checked batch: :meth:`score` on chunks of ``batch_size``. Rewards that need the
        whole batch at once (the normalising combinators) override this instead of :meth:`score`."""
        device = self.device
        chunks = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            if isinstance(chunk, torch.Tensor) and device is not None:
                chunk = chunk.to(device)
            chunk_prompts = None if prompts is None else prompts[start : start + self.batch_size]
            scores = self.score(chunk, chunk_prompts)
            chunks.append(scores.reshape(-1).to(chunks[0].device) if chunks else scores.reshape(-1))
        return torch.cat(chunks)

    def _keep_graph(self, samples: Any, grad: bool | None) -> bool:
        if grad is None:
            return (
                self.differentiable
                and torch.is_grad_enabled()
                and isinstance(samples, torch.Tensor)
                and samples.requires_grad
            )
        if grad and not self.differentiable:
            raise ValueError(f"{type(self).__name__} is not differentiable; call it with grad=False")
        return bool(grad)

    def extra_repr(self) -> str:
        return f"modality={self.modality}, differentiable={self.differentiable}, batch_size={self.batch_size}"
