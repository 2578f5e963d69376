"""Stage 3 of the audit: sparse autoencoders that turn residual activations into features.

:func:`load_sae` loads SAELens- or sparsify-format SAEs, or finds SAEs shipped with NeuronLens
or cached for this model, or trains TopK SAEs on the base model (then caches them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from .._cache import CACHE_FORMAT, cache_root, discard_entry, key_digest
from .._io import write_json_atomic
from .._progress import progress
from ..config import AuditConfig, check_layers, default_layers
from ..errors import ConfigError, SAEError
from ..models._digest import sha256_file
from ._formats import CFG, SAELENS_WEIGHTS, discover, load_saelens, load_sparsify, save_saelens
from ._sae import SAEInfo, SparseAutoencoder, reconstruction_metrics
from ._train import SAETrainConfig, train_topk_sae

__all__ = [
    "MAX_TRUSTED_DEAD_FRACTION",
    "MAX_TRUSTED_FVU",
    "SAEInfo",
    "SAESet",
    "SAETrainConfig",
    "SparseAutoencoder",
    "load_sae",
    "load_saelens",
    "load_sparsify",
    "reconstruction_metrics",
    "save_saelens",
    "train_saes",
]

# Thresholds above which an SAE is too poor to base a verdict on (docs/METHOD.md).
MAX_TRUSTED_FVU = AuditConfig.max_sae_fvu  # the audit's setting, whose docstring says why
MAX_TRUSTED_DEAD_FRACTION = 0.5


class SAESet(Mapping[int, SparseAutoencoder]):
    """SAEs keyed by layer, with a digest over all of them."""

    def __init__(self, saes: Mapping[int, SparseAutoencoder]):
        self._saes = dict(sorted(saes.items()))

    def __getitem__(self, layer: int) -> SparseAutoencoder:
        return self._saes[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._saes)

    def __len__(self) -> int:
        return len(self._saes)

    @property
    def layers(self) -> list[int]:
        return list(self._saes)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for layer, sae in self._saes.items():
            h.update(f"{layer}:{sae.digest};".encode())
        return h.hexdigest()

    def identity(self) -> list[dict[str, Any]]:
        return [
            {"layer": layer, "sha256": sae.digest, **{k: v for k, v in asdict(sae.info).items() if k != "training"}}
            for layer, sae in self._saes.items()
        ]

    def quality_warnings(self, max_fvu: float = MAX_TRUSTED_FVU) -> list[str]:
        """Why any SAE here is too poor to trust by the quality its files record (empty when all
        are fine or nothing is recorded; the audit also measures each SAE on its own text)."""
        out = []
        for layer, sae in self._saes.items():
            m = sae.info.metrics
            if m.get("fvu", 0.0) > max_fvu:
                out.append(f"SAE for layer {layer} explains too little variance (FVU {m['fvu']:.2f} > {max_fvu}).")
            if m.get("dead_fraction", 0.0) > MAX_TRUSTED_DEAD_FRACTION:
                out.append(
                    f"SAE for layer {layer} has {m['dead_fraction']:.0%} dead latents (> {MAX_TRUSTED_DEAD_FRACTION:.0%})."
                )
        return out


def load_sae(
    model: Any,
    layers: Sequence[int] | None = None,
    source: str | Path | None = None,
    *,
    train: bool = True,
    train_config: SAETrainConfig | None = None,
    use_shipped: bool = True,
) -> SAESet:
    """SAEs for `layers` of `model` (a ModelHandle).

    With `source`: a folder of SAELens or sparsify SAEs (one SAE, or one sub-folder per layer),
    or a hub repo id holding them. Without: SAEs shipped with NeuronLens for this exact model
    (matched by content digest), then the local cache, then (if `train`) TopK SAEs trained on
    the model's own activations over the built-in corpus, which are cached for next time.
    """
    _require_model(model)
    n_layers = model.n_layers
    layers = default_layers(n_layers) if layers is None else check_layers(layers)  # distinct ints, as the CLI checks
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise SAEError(
            f"Layer(s) {bad} are out of range: {model.name} has {n_layers} decoder layers (0..{n_layers - 1}).",
            f"Choose layers between 0 and {n_layers - 1}.",
        )
    if source is not None:
        found = {sae.layer: sae for sae in discover(_source_folder(source))}
        missing = [layer for layer in layers if layer not in found]
        if missing:
            raise SAEError(
                f"{source} has no SAE for layer(s) {missing} (it has layers {sorted(found)}).",
                f"Audit layers {sorted(found)} (--layers), or add SAEs for the missing layers.",
            )
        chosen = {layer: found[layer] for layer in layers}
    else:
        cfg = train_config or SAETrainConfig()
        chosen = {}
        for layer in layers:
            shipped = _shipped_folder(model.digest, layer) if use_shipped else None
            sae = load_saelens(shipped) if shipped is not None else _cached_sae(model.digest, cfg, layer)
            if sae is not None:
                chosen[layer] = sae
        missing = [layer for layer in layers if layer not in chosen]
        if missing:
            if not train:
                raise SAEError(
                    f"No SAE is shipped or cached for {model.name} layer(s) {missing}.",
                    "Pass source=<folder of SAELens/sparsify SAEs>, or allow training (train=True / drop --no-train-sae).",
                )
            chosen.update(train_saes(model, missing, cfg))
    d_model = model.d_model
    for layer, sae in chosen.items():
        if sae.info.d_in != d_model:
            raise SAEError(
                f"The SAE for layer {layer} reads vectors of size {sae.info.d_in}, but {model.name} has d_model {d_model}.",
                "Use SAEs trained on this model (or let NeuronLens train them by omitting source=).",
            )
    return SAESet(chosen)


def _require_model(model: Any) -> None:
    """A clear error for a `model` that is not a ModelHandle (None, a path, a bare nn.Module),
    before anything reads its layers or digest."""
    from ..models import ModelHandle

    if not isinstance(model, ModelHandle):
        raise ConfigError(
            f"load_sae needs the model as a ModelHandle, got {type(model).__name__}.",
            "Pass the handle load_model returned: load_sae(load_model('<model>'), layers=[...]).",
        )


def _source_folder(source: str | Path) -> Path:
    path = Path(str(source)).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=["*cfg.json", "*.safetensors"]))
    except Exception as exc:  # noqa: BLE001 - hub errors vary; all mean "not available"
        raise SAEError(
            f"SAE source {str(source)!r} is not a local folder and could not be fetched from the hub ({type(exc).__name__}).",
            "Pass a local folder of SAELens (cfg.json + sae_weights.safetensors) or sparsify SAEs.",
        ) from exc


def _shipped_folder(model_digest: str, layer: int) -> Path | None:
    root = resources.files("neuronlens.saes").joinpath("shipped", model_digest[:16], f"layer_{layer}")
    path = Path(str(root))
    return path if path.is_dir() else None


def _settings_key(model_digest: str, cfg: SAETrainConfig) -> str:
    from ._corpus import CORPUS_RESPONSE_TOKENS

    return key_digest({"model": model_digest, "train": asdict(cfg), "corpus_tokens": CORPUS_RESPONSE_TOKENS})[:16]


_SEAL = "neuronlens_cache.json"
"""In a cached SAE's folder: the cache format, the entry's key and the sha256 of its two files,
so an edited, truncated or older entry is retrained, never trusted (its saved metrics included)."""


def _cache_folder(model_digest: str, cfg: SAETrainConfig, layer: int) -> Path:
    return cache_root() / "saes" / f"{model_digest[:16]}-{_settings_key(model_digest, cfg)}" / f"layer_{layer}"


def _seal(folder: Path, model_digest: str, cfg: SAETrainConfig, layer: int) -> dict[str, Any]:
    key = {"model": model_digest, "settings": _settings_key(model_digest, cfg), "layer": layer}
    return {"format": CACHE_FORMAT, "key": key, "files": {name: sha256_file(folder / name) for name in (CFG, SAELENS_WEIGHTS)}}


def _cached_sae(model_digest: str, cfg: SAETrainConfig, layer: int) -> SparseAutoencoder | None:
    """The SAE trained earlier for this model, settings and layer, or None when there is none or
    its entry does not match its seal (then it is removed, and retrained)."""
    path = _cache_folder(model_digest, cfg, layer)
    if not path.is_dir():
        return None
    try:
        sealed = json.loads((path / _SEAL).read_text(encoding="utf-8")) == _seal(path, model_digest, cfg, layer)
        sae = load_saelens(path) if sealed else None
    except (OSError, ValueError, SAEError):  # ValueError: a seal that is not JSON or not UTF-8
        sae = None
    if sae is None:
        discard_entry(path)
    return sae


def train_saes(model: Any, layers: Sequence[int], cfg: SAETrainConfig | None = None, *, save: bool = True) -> dict[int, SparseAutoencoder]:
    """Train TopK SAEs for `layers` on `model`'s activations over the built-in corpus (one pass
    collects all layers), record their held-out quality, and cache them in SAELens format."""
    from ..capture import collect_activations
    from ._corpus import corpus_prompts, corpus_sequences

    cfg = cfg or SAETrainConfig()
    layers = sorted(layers)
    with progress("Generating SAE corpus responses", len(corpus_prompts().prompts)) as advance:
        seqs = corpus_sequences(model, on_batch=advance)
    with progress(f"Capturing activations (layers {layers})", len(seqs)) as advance:
        coll = collect_activations(
            model.model, seqs, layers, positions="all", pad_id=model.tokenizer.pad_token_id or 0, on_batch=advance
        )
    out: dict[int, SparseAutoencoder] = {}
    for layer in layers:
        info = SAEInfo(
            d_in=model.d_model,
            d_sae=cfg.expansion_factor * model.d_model,
            architecture="topk",
            layer=layer,
            hook_name=f"blocks.{layer}.hook_resid_post",
            k=cfg.k,
            model_name=model.name,
            model_digest=model.digest,
            source="trained",
        )
        state: dict[str, Any] = {"last": 0}
        with progress(f"Training SAE layer {layer}", None) as advance:

            def on_step(step: int, total: int, loss: float, _s: dict[str, Any] = state, _a: Any = advance) -> None:
                _a(step - _s["last"])
                _s["last"] = step

            sae = train_topk_sae(coll.acts[layer], info, cfg, on_step=on_step)
        if save:
            folder = _cache_folder(model.digest, cfg, layer)

            def seal(tmp: Path, _layer: int = layer) -> None:
                write_json_atomic(tmp / _SEAL, _seal(tmp, model.digest, cfg, _layer))

            save_saelens(sae, folder, before_publish=seal)
            sae.info.source = str(folder)
        out[layer] = sae
    return out
