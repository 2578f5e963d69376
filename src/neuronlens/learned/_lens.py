"""The logit lens of a residual-space vector: the model's final norm, then its unembedding.

As the diffing-toolkit's `logit_lens` (src/diffing/utils/model.py) does: promoted tokens are the
top of softmax(lm_head(norm(v))), suppressed ones the top of softmax(lm_head(norm(-v))).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ..models import unwrap_peft

_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm", "model.decoder.final_layer_norm")
"""Where the final norm sits (Llama/Mistral/Qwen2/Gemma, GPT-2, GPT-NeoX, Phi, OPT)."""


@dataclass(frozen=True)
class TokenScore:
    """A token the lens reads, with its probability under the lens."""

    token_id: int
    token: str
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "token": self.token, "prob": self.prob}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenScore:
        return cls(int(data["token_id"]), str(data["token"]), float(data["prob"]))


def final_norm(model: nn.Module) -> nn.Module:
    inner = unwrap_peft(model)
    for path in _NORM_PATHS:
        found: Any = inner
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, nn.Module):
            return found
    raise ModelLoadError(
        f"Could not find the final norm of {type(inner).__name__}, which the logit lens applies before the unembedding.",
        "Use a Llama, Mistral, Qwen2, Gemma, GPT-2, GPT-NeoX, Phi or OPT-style causal LM, or open an issue with the class name.",
    )


@torch.inference_mode()
def lens_probs(model: nn.Module, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(promoted, suppressed) float32 probabilities [n, vocab] of `vectors` [n, d_model]."""
    head = model.get_output_embeddings()
    w = head.weight
    x = vectors.to(device=w.device, dtype=w.dtype)
    norm = final_norm(model)
    pos = head(norm(x)).float().softmax(-1).cpu()
    neg = head(norm(-x)).float().softmax(-1).cpu()
    return pos, neg


def top_tokens(probs: torch.Tensor, tokenizer: Any, k: int) -> tuple[TokenScore, ...]:
    """The `k` most probable tokens of one distribution [vocab]."""
    values, ids = probs.topk(min(k, probs.shape[-1]))
    return tuple(TokenScore(int(i), tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids))
