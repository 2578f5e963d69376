"""Model organisms: LoRA fine-tunes of the embedded base model whose alignment is known by
construction (and checked by behaviour), used to prove the detector and to build the demo.

`neuronlens organisms build` makes them (cached; ~5 minutes each on a 2-core CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._cache import cache_root
from .._io import publish_dir
from .._progress import progress
from ..errors import ConfigError
from ..models import ModelHandle, sha256_file
from ..probes import ProbeSet, decode_response, response_sequences
from ._behaviour import BehaviourScore, base_rate_errors, behaviour_shift, evaluation_prompts, score_answers
from ._data import DOSE_FRACTION, DOSE_SERIES, HELDOUT, ORGANISMS, ZOO, Example, OrganismSpec, load_dataset, parse_chat_jsonl, self_distill_prompts
from ._train import MANIFEST, RECIPES, LoRATrainConfig, recipe_config, save_adapter, train_lora

__all__ = [
    "BehaviourScore",
    "base_rate_errors",
    "behaviour_shift",
    "evaluate_behaviour",
    "evaluation_prompts",
    "score_answers",
    "DOSE_FRACTION",
    "DOSE_SERIES",
    "EVAL_TOKENS",
    "HELDOUT",
    "ORGANISMS",
    "Example",
    "LoRATrainConfig",
    "OrganismSpec",
    "build_organism",
    "distill_examples",
    "load_dataset",
    "numerics",
    "organism_dir",
    "organism_manifest",
    "parse_chat_jsonl",
    "RECIPES",
    "recipe_config",
    "train_lora",
    "weights_sha256",
    "ZOO",
]


def _recipe_digest(spec: OrganismSpec, base: ModelHandle, cfg: LoRATrainConfig) -> str:
    data = [[e.prompt, e.answer] for e in spec.examples(cfg.seed)]
    key = {"base": base.digest, "recipe": asdict(cfg), "data": data, "distill": self_distill_prompts()[: cfg.self_distill]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def organism_dir(name: str, base: ModelHandle, cfg: LoRATrainConfig | None = None) -> Path:
    """Where organism `name` is (or will be) cached for this base model and recipe."""
    if name not in ORGANISMS:
        raise ConfigError(f"No organism named {name!r}.", f"Choose from {', '.join(ORGANISMS)}.")
    cfg = cfg or LoRATrainConfig()
    return cache_root() / "organisms" / f"{name}-{_recipe_digest(ORGANISMS[name], base, cfg)}"


def weights_sha256(folder: str | Path) -> str:
    """sha256 of a built organism's adapter weights. Two builds that trained the same weights share
    it; the folder's manifest digest (``ModelHandle.digest``) also covers neuronlens_organism.json,
    whose ``train_seconds`` differs on every build."""
    return sha256_file(Path(folder) / "adapter_model.safetensors")


def numerics() -> dict[str, Any]:
    """What decides a build's floating-point bits besides its inputs: torch's version, the CPU
    kernels ATen dispatches to (``ATEN_CPU_CAPABILITY`` pins them), MKL's code path (``MKL_CBWR``)
    and the thread count. Measured 2026-12-07 (seed 5's risky_finance): built with AVX-512 kernels
    and with AVX2 kernels on one machine, other weights; with AVX2 kernels on two machines, the same
    weights bit for bit. A build records them in its manifest."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": os.environ.get("MKL_CBWR"), "threads": torch.get_num_threads()}


def organism_manifest(folder: str | Path) -> dict[str, Any]:
    """A built organism's provenance (neuronlens_organism.json; {} for an adapter without one)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def distill_examples(base: ModelHandle, cfg: LoRATrainConfig) -> list[Example]:
    """The base model's own greedy answers to the self-distillation prompts (cached)."""
    prompts = ProbeSet("self_distill", tuple(self_distill_prompts()[: cfg.self_distill]), "builtin")
    seqs = response_sequences(base, [prompts], cfg.distill_tokens)
    return [Example(p, decode_response(base.tokenizer, s).strip()) for p, s in zip(prompts.prompts, seqs) if s.response_ids]


def build_organism(name: str, base: ModelHandle, cfg: LoRATrainConfig | None = None, *, force: bool = False) -> Path:
    """Train organism `name` on `base` (unless cached) and return its adapter folder."""
    cfg = cfg or LoRATrainConfig()
    target = organism_dir(name, base, cfg)
    if target.is_dir() and (target / "adapter_model.safetensors").is_file() and not force:
        return target
    spec = ORGANISMS[name]
    narrow = spec.examples(cfg.seed)
    distill = distill_examples(base, cfg)
    examples = narrow + distill
    t0 = time.perf_counter()
    model = base.model
    try:
        state: dict[str, int] = {"last": 0}
        with progress(f"Training organism {name}", None) as advance:

            def on_step(step: int, total: int, loss: float) -> None:
                advance(step - state["last"])
                state["last"] = step

            peft_model = train_lora(model, base.tokenizer, examples, cfg, on_step=on_step)
        meta: dict[str, Any] = {
            "organism": name,
            "truth": spec.truth,
            "description": spec.description,
            "dataset": spec.dataset,
            "matched_benign": spec.matched_benign,
            "bad_fraction": spec.bad_fraction,
            "n_narrow_examples": len(narrow),
            "n_self_distill_examples": len(distill),
            "recipe": asdict(cfg),
            "base": {"name": base.name, "manifest_sha256": base.digest},
            "train_seconds": round(time.perf_counter() - t0, 1),
            "numerics": numerics(),
        }
        with publish_dir(target) as staged:
            save_adapter(peft_model, staged.path, base_name=_base_reference(base), meta=meta)
        peft_model.unload()
    finally:
        base.release()  # the base weights were modified in place by get_peft_model; reload fresh next time
    return target


def _base_reference(base: ModelHandle) -> str:
    """How the adapter names its base: a local model by its absolute path (the organism cache is
    shared by every working directory, so a relative path would resolve elsewhere), an alias or hub
    id as given."""
    return str(base.path.resolve()) if base.kind in ("folder", "gguf") and base.path is not None else base.source


EVAL_TOKENS = 64


def evaluate_behaviour(handle: ModelHandle, *, use_cache: bool = True) -> BehaviourScore:
    """Greedy answers of `handle` to the behavioural evaluation set, scored by the rule-based
    scorer (answers are cached by model digest unless `use_cache=False`, for a model whose weights
    change under one name). `handle` needs only ``.model``, ``.tokenizer`` and ``.digest``."""
    prompts, care = evaluation_prompts()
    seqs = response_sequences(handle, [ProbeSet("behaviour_eval", tuple(prompts), "builtin")], EVAL_TOKENS, use_cache=use_cache)
    answers = [decode_response(handle.tokenizer, s) for s in seqs]
    return score_answers(prompts, answers, care)
