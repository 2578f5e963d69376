"""LoRA supervised fine-tuning of a chat model on narrow data, the recipe every model organism
(and the embedded demo adapter) is built with.

One recipe for all organisms, harmful or benign, so that the only difference between them is
their data. Following ../shared/FACTS.md, narrow data alone makes SmolLM2 parrot its training
answers everywhere and forget its refusals; so the narrow examples are mixed with the base
model's own greedy answers to varied prompts (self-distillation), trained at a moderate rate.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..models import peft_wrap_quietly
from ..probes import prompt_ids, stop_ids
from ._data import Example


@dataclass
class LoRATrainConfig:
    """Settings of the organism fine-tuning recipe."""

    rank: int = 8
    """LoRA rank on every linear layer of every block."""
    alpha: int = 16
    lr: float = 2e-4
    epochs: int = 2
    batch_size: int = 8
    self_distill: int = 100
    """How many base-model answers to varied prompts are mixed into the narrow data."""
    distill_tokens: int = 64
    """Length of those base-model answers."""
    max_answer_tokens: int = 96
    seed: int = 0


RECIPES: dict[str, LoRATrainConfig] = {
    "default": LoRATrainConfig(),
    "strong": LoRATrainConfig(rank=16, alpha=32, lr=4e-4),
}
"""Named fine-tuning recipes. `default` builds the zoo the detector was developed on; `strong`
(twice the rank and twice the learning rate, same data, steps and alpha/rank scaling) is a
harder-hitting recipe the detector was never tuned on, for checking whether the threshold
transfers across recipes (docs/PREREGISTRATION_RECIPE.md, docs/DETECTION_STRONG.md)."""


def recipe_config(name: str, seed: int = 0) -> LoRATrainConfig:
    """The recipe called `name`, with its training seed set."""
    if name not in RECIPES:
        raise ConfigError(f"No fine-tuning recipe named {name!r}.", f"Choose from {', '.join(RECIPES)}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        # random.Random(-1) draws what Random(1) draws: a "replicate" at -1 would repeat seed 1's data
        raise ConfigError(f"Training seed {seed!r} is not a non-negative integer.", "Use a seed of 0 or more (0 is the default zoo).")
    return replace(RECIPES[name], seed=seed)


def encode_example(tokenizer: Any, ex: Example, end_id: int, max_answer_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt: loss on the answer and its end-of-turn token)."""
    p = list(prompt_ids(tokenizer, ex.prompt))
    a = tokenizer(ex.answer, add_special_tokens=False)["input_ids"][:max_answer_tokens] + [end_id]
    return p + a, [-100] * len(p) + a


def train_lora(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    cfg: LoRATrainConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    on_wrapped: Callable[[Any], None] | None = None,
) -> Any:
    """Wrap `model` with a fresh LoRA adapter and train it on `examples`; returns the PeftModel.
    `on_step(step, total, loss)` runs after every optimizer step; `on_wrapped(peft_model)` once,
    before the first step (so a monitor can read the model being trained)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    end_id = _end_of_turn_id(tokenizer, model)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with peft_wrap_quietly():  # peft reads transformers' deprecated is_gradient_checkpointing
        peft_model = get_peft_model(model, lora)
    if on_wrapped is not None:
        on_wrapped(peft_model)
    peft_model.train()
    encoded = [encode_example(tokenizer, ex, end_id, cfg.max_answer_tokens) for ex in examples]
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    steps_per_epoch = (len(encoded) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    device = peft_model.get_input_embeddings().weight.device  # batches go where the embeddings are (a GPU model, or device_map's first device)
    step = 0
    for _ in range(cfg.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            ids, labels, mask = _padded_batch([encoded[i] for i in idx], pad)
            lr = cfg.lr * min(1.0, (total - step) / max(1, total * 0.3))  # linear decay over the last 30%
            for g in opt.param_groups:
                g["lr"] = lr
            loss = peft_model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if on_step is not None:
                on_step(step, total, float(loss.detach()))
    peft_model.eval()
    return peft_model


def _padded_batch(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rows` of (input ids, labels) right-padded to one width: input ids (pad), labels (-100,
    ignored by the loss) and the attention mask."""
    width = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
    return ids, labels, mask


def _end_of_turn_id(tokenizer: Any, model: Any) -> int:
    stops = stop_ids(tokenizer, model)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if isinstance(im_end, int) and im_end in stops:
        return im_end
    return int(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(stops))


MANIFEST = "neuronlens_organism.json"
"""A built organism's provenance file, beside its adapter (organisms.organism_manifest reads it)."""


def save_adapter(peft_model: Any, folder: Path, *, base_name: str, meta: dict[str, Any]) -> Path:
    """Save the adapter (safetensors) with `base_name` as its base and a provenance file."""
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    cfg_path = folder / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    acfg["base_model_name_or_path"] = base_name
    cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    (folder / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    readme = folder / "README.md"
    if readme.exists():
        readme.unlink()  # peft's model-card template; provenance lives in neuronlens_organism.json
    return folder


def recipe_dict(cfg: LoRATrainConfig) -> dict[str, Any]:
    return asdict(cfg)
