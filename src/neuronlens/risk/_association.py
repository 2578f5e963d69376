"""How strongly each SAE latent is tied to each risk concept, measured on the base model.

For every matched pair of a concept (same prompt; a reply that expresses the concept and one that
does not), the base model reads prompt + reply and each latent's mean activation over the reply
tokens is taken. A latent's association with the concept is the AUROC of those means between
positive and negative replies (1.0: fires more on every positive than on any negative), tested
with a Mann-Whitney U test and Benjamini-Hochberg over the layer's latents. The latents with
AUROC >= `min_auroc` and q < `max_q` are the concept's latents; their positive-minus-negative mean
gap is the concept's direction in feature space, used to score how far a fine-tune moved along it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from .._cache import cache_root, discard_entry, key_digest, read_tensor_file, write_tensor_file
from .._memory import release_free_memory
from ..capture import TokenSequence, code_chunk_tokens, make_batches, massive_keep, row_chunks, run_to_layers
from ..capture import gather as gather_positions
from ..stats import bh_qvalues
from ..concepts import Concept, pair_sequences

MIN_AUROC = 0.75
MAX_Q = 0.05
ASSOCIATION_FORMAT = 1


@dataclass
class ConceptAssociation:
    """One concept at one layer: per-latent AUROC and q, and the concept direction."""

    concept: str
    layer: int
    auroc: np.ndarray
    q_value: np.ndarray
    pos_mean: np.ndarray
    """Mean over positive replies of each latent's per-reply mean activation."""
    neg_mean: np.ndarray

    @property
    def latents(self) -> np.ndarray:
        """Indices of the concept's latents (AUROC >= MIN_AUROC, q < MAX_Q, firing more on positives)."""
        return np.flatnonzero((self.auroc >= MIN_AUROC) & (self.q_value < MAX_Q) & (self.pos_mean > self.neg_mean))

    @property
    def direction(self) -> np.ndarray:
        """Weights over all latents: the positive-minus-negative gap on the concept's latents, 0 elsewhere."""
        w = np.zeros_like(self.pos_mean)
        ix = self.latents
        w[ix] = self.pos_mean[ix] - self.neg_mean[ix]
        return w

    @property
    def gap(self) -> float:
        """Projection gap between positive and negative replies along `direction` (> 0)."""
        w = self.direction
        return float(w @ w)


@torch.inference_mode()
def reply_means(
    model: torch.nn.Module, sae: Any, seqs: Sequence[TokenSequence], layers: Sequence[int], pad_id: int,
    token_budget: int = 4096, massive_factor: float = 10.0, on_batch: Callable[[int], None] | None = None,
) -> dict[int, np.ndarray]:
    """[n_seqs, d_sae] mean code over each sequence's response tokens, per layer."""
    device = next(model.parameters()).device
    index = {id(s): i for i, s in enumerate(seqs)}
    out = {layer: np.zeros((len(seqs), sae[layer].d_sae), dtype=np.float64) for layer in layers}
    for batch in make_batches(seqs, "response", token_budget, pad_id):
        resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
        for layer in layers:
            x = gather_positions(resid[layer], batch)
            keep = massive_keep(x, massive_factor)
            for sub, ix in row_chunks(batch, code_chunk_tokens(sae[layer].d_sae)):  # bounded memory for wide SAEs
                z, k = sae[layer].encode(x[ix]), keep[ix]
                for r, seq in enumerate(sub.sequences):
                    sel = (sub.row == r) & k
                    if bool(sel.any()):
                        out[layer][index[id(seq)]] = z[sel].double().mean(0).numpy()
        if on_batch is not None:
            on_batch(len(batch.sequences))
    return out


def associations_from_means(concept: str, layer: int, means: np.ndarray, labels: np.ndarray) -> ConceptAssociation:
    pos, neg = means[labels == 1], means[labels == 0]
    u, p = mannwhitneyu(pos, neg, alternative="two-sided", axis=0, method="asymptotic")
    auroc = u / (len(pos) * len(neg))
    p = np.where(np.isfinite(p), p, 1.0)
    return ConceptAssociation(concept, layer, auroc, bh_qvalues(p), pos.mean(0), neg.mean(0))


def concept_associations(
    handle: Any, sae: Any, concepts: Sequence[Concept], layers: Sequence[int], *, on_batch: Callable[[int], None] | None = None
) -> dict[tuple[str, int], ConceptAssociation]:
    """Associations for every (concept, layer); cached by (model, SAE, concept) digests."""
    out: dict[tuple[str, int], ConceptAssociation] = {}
    todo: list[Concept] = []
    for c in concepts:
        cached = {layer: _load_cached(handle.digest, sae[layer].digest, c, layer) for layer in layers}
        if all(v is not None for v in cached.values()):
            out.update({(c.name, layer): v for layer, v in cached.items() if v is not None})
            if on_batch is not None:
                on_batch(2 * len(c.pairs))
        else:
            todo.append(c)
    if todo:
        model = handle.model
        pad = handle.tokenizer.pad_token_id or 0
        for c in todo:
            seqs, labels = pair_sequences(handle.tokenizer, c)
            means = reply_means(model, sae, seqs, layers, pad, on_batch=on_batch)
            for layer in layers:
                assoc = associations_from_means(c.name, layer, means[layer], labels)
                _store_cached(handle.digest, sae[layer].digest, c, layer, assoc)
                out[(c.name, layer)] = assoc
            del means
            release_free_memory()  # per-concept temporaries would otherwise stay resident (see _memory)
    return out


def _cache_key(model_digest: str, sae_digest: str, concept: Concept, layer: int) -> dict[str, Any]:
    return {"model": model_digest, "sae": sae_digest, "concept": concept.digest, "layer": layer, "format": ASSOCIATION_FORMAT}


def association_cache_path(model_digest: str, sae_digest: str, concept: Concept, layer: int) -> Path:
    return _path_for(_cache_key(model_digest, sae_digest, concept, layer), concept, layer)


def _path_for(key: dict[str, Any], concept: Concept, layer: int) -> Path:
    return cache_root() / "associations" / f"{concept.name}-L{layer}-{key_digest(key)[:20]}.safetensors"


def _load_cached(model_digest: str, sae_digest: str, concept: Concept, layer: int) -> ConceptAssociation | None:
    """From the package's shipped associations, else the user cache; a file whose checksum or key
    does not match is never trusted (a user-cache one is removed and recomputed)."""
    key = _cache_key(model_digest, sae_digest, concept, layer)
    own = _path_for(key, concept, layer)
    for path in [root / own.name for root in _shipped_roots(model_digest)] + [own]:
        if not path.is_file():
            continue
        t = read_tensor_file(path, key)
        if t is not None:
            return ConceptAssociation(
                concept.name, layer, t["auroc"].numpy(), t["q_value"].numpy(), t["pos_mean"].numpy(), t["neg_mean"].numpy()
            )
        if path == own:
            discard_entry(path)
        else:
            warnings.warn(f"The shipped concept association {path} is corrupt; measuring it again.", stacklevel=2)
    return None


def _store_cached(model_digest: str, sae_digest: str, concept: Concept, layer: int, a: ConceptAssociation) -> None:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(a, k), dtype=np.float64)) for k in ("auroc", "q_value", "pos_mean", "neg_mean")}
    key = _cache_key(model_digest, sae_digest, concept, layer)
    write_tensor_file(_path_for(key, concept, layer), key, tensors)


def _shipped_roots(model_digest: str) -> list[Path]:
    from importlib import resources

    root = Path(str(resources.files("neuronlens.saes"))) / "shipped" / model_digest[:16] / "associations"
    return [root] if root.is_dir() else []


def association_digest(assocs: dict[tuple[str, int], ConceptAssociation]) -> str:
    h = hashlib.sha256()
    for (c, layer), a in sorted(assocs.items()):
        h.update(f"{c}:{layer}:".encode())
        h.update(np.ascontiguousarray(a.direction).tobytes())
    return h.hexdigest()
