"""Stage 3 of the audit: sparse autoencoders that turn residual activations into features.

:func:`load_sae` loads SAELens- or sparsify-format SAEs, or finds SAEs shipped with NeuronLens
or cached for this model, or trains TopK SAEs on the base model (then caches them).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Union

from .._cache import CACHE_FORMAT, cache_root, discard_entry, key_digest
from .._io import write_json_atomic
from .._progress import progress
from ..config import AuditConfig, check_layers, default_layers, is_int
from ..errors import ConfigError, SAEError
from ..models import sha256_file
from ._families import load_folder
from ._formats import CFG, SAELENS_WEIGHTS, load_saelens, load_sparsify, save_saelens
from ._hub import load_hub_repo
from ._releases import load_release, pick, release_spec
from ._sae import SAEInfo, SparseAutoencoder, check_finite, check_sae, reconstruction_metrics
from ._train import SAETrainConfig, train_topk_sae

__all__ = [
    "MAX_TRUSTED_DEAD_FRACTION",
    "MAX_TRUSTED_FVU",
    "SAEArgument",
    "SAEInfo",
    "SAESet",
    "SAETrainConfig",
    "SparseAutoencoder",
    "as_sae_set",
    "check_sae",
    "exceeds",
    "quality_warning",
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


def exceeds(value: Any, limit: float) -> bool:
    """Whether a quality metric (FVU, dead fraction) fails its bar `limit`: above it, or not a
    number at all (NaN compares False with everything, so `value > limit` alone would pass it)."""
    return not _is_number(value) or math.isnan(value) or value > limit


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def quality_warning(layer: int, what: str, label: str, value: Any, fmt: str, limit: str) -> str:
    """The warning for a metric that `exceeds` its `limit` (`what` is wrong, e.g. "explains too
    little variance"), saying so when the metric is NaN or not a number at all."""
    if _is_number(value) and not math.isnan(value):
        return f"SAE for layer {layer} {what} ({label} {format(value, fmt)} > {limit})."
    return f"SAE for layer {layer} has {label} {value!r}, not a number: its quality is unknown, so it cannot be trusted."


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
            if "fvu" in m and exceeds(m["fvu"], max_fvu):
                out.append(quality_warning(layer, "explains too little variance", "FVU", m["fvu"], ".2f", f"{max_fvu}"))
            if "dead_fraction" in m and exceeds(m["dead_fraction"], MAX_TRUSTED_DEAD_FRACTION):
                out.append(quality_warning(layer, "has too many dead latents", "dead fraction", m["dead_fraction"],
                                           ".0%", f"{MAX_TRUSTED_DEAD_FRACTION:.0%}"))
        return out


def load_sae(
    model: Any,
    layers: Sequence[int] | None = None,
    source: str | Path | None = None,
    *,
    train: bool = True,
    train_config: SAETrainConfig | None = None,
    use_shipped: bool = True,
    release: str | None = None,
    sae_id: str | Sequence[str] | None = None,
) -> SAESet:
    """SAEs for `layers` of `model` (a ModelHandle).

    With `source`: a folder of SAEs in SAELens, sparsify, Gemma Scope (1 or 2) or Llama Scope
    layout (one SAE's folder, or any folder holding them; several for one layer must be chosen
    between), a sae-lens release name (``RELEASE`` or ``RELEASE:SAE_ID[,SAE_ID...]``, the same
    as `release=` and `sae_id=`; without SAE ids, the release's one SAE per layer), or a hub repo
    id holding SAEs. Named SAE ids without `layers` audit their own layers. Without: SAEs shipped
    with NeuronLens for this exact model (matched by content digest), then the local cache, then
    (if `train`) TopK SAEs trained on the model's own activations over the built-in corpus, which
    are cached for next time.
    """
    _require_model(model)
    spec = release_spec(source, release, sae_id)
    named = load_release(*spec, None) if spec is not None and spec[1] and layers is None else None
    layers = _checked_layers(model, sorted(named) if named else layers)
    if spec is not None:
        label = spec[0] + (":" + ",".join(spec[1]) if spec[1] else "")
        chosen = pick(named or load_release(*spec, layers), layers, label)
    elif source is not None:
        path = Path(str(source)).expanduser()
        chosen = load_folder(path, layers, str(source)) if path.exists() else load_hub_repo(str(source), layers)
    else:
        chosen = _own_saes(model, layers, train_config or SAETrainConfig(), train=train, use_shipped=use_shipped)
    _check_d_model(model, chosen)
    return SAESet(chosen)


def _checked_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """`layers` (default layers when None) as distinct ints, as the CLI checks, each a decoder
    layer of `model`."""
    n_layers = model.n_layers
    layers = default_layers(n_layers) if layers is None else check_layers(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:  # a setting out of range, as AuditConfig.validate calls it: ConfigError
        raise ConfigError(
            f"Layer(s) {bad} are out of range: {model.name} has {n_layers} decoder layers (0..{n_layers - 1}).",
            f"Choose layers between 0 and {n_layers - 1}.",
        )
    return layers


def _own_saes(model: Any, layers: Sequence[int], cfg: SAETrainConfig, *, train: bool, use_shipped: bool) -> dict[int, SparseAutoencoder]:
    """SAEs shipped for `model`, then cached, then (if `train`) trained for the layers still missing."""
    chosen: dict[int, SparseAutoencoder] = {}
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
                "Pass source=<folder of SAEs, or a sae-lens release>, or allow training (train=True / drop --no-train-sae).",
            )
        chosen.update(train_saes(model, missing, cfg))
    return chosen


def _check_d_model(model: Any, chosen: Mapping[int, SparseAutoencoder]) -> None:
    d_model = model.d_model
    for layer, sae in chosen.items():
        if sae.info.d_in != d_model:
            raise SAEError(
                f"The SAE for layer {layer} reads vectors of size {sae.info.d_in}, but {model.name} has d_model {d_model}.",
                "Use SAEs trained on this model, or let NeuronLens train them: drop --sae (source=).",
            )


SAEArgument = Union[
    SAESet, SparseAutoencoder, Mapping[int, Union[SparseAutoencoder, str, "os.PathLike[str]"]], str, "os.PathLike[str]", None
]
"""What `compare_models(sae=...)` takes (:func:`as_sae_set`)."""
SAE_ARGUMENT = (
    "an SAESet from load_sae, one SparseAutoencoder, a folder of SAEs or a sae-lens release name (str or Path), "
    "a dict {layer: SparseAutoencoder or folder}, or None (shipped, cached or trained SAEs)"
)
_SAE_FIX = "Pass sae=load_sae(base, layers=[...]) or sae=load_sae(base, layers=[...], source='<folder>'), the folder itself, or None."


def as_sae_set(sae: Any, model: Any, layers: Sequence[int] | None = None) -> SAESet:
    """`compare_models`'s `sae=` (any of :data:`SAE_ARGUMENT`) as an SAESet for `model`, each SAE
    checked as a loaded one is (finite weights, k, shapes) and keyed by its own layer. None or a
    folder: :func:`load_sae` for `layers` (default layers when None), as the CLI's --sae does."""
    _require_model(model)
    if sae is None or isinstance(sae, (str, os.PathLike)):
        return load_sae(model, layers, source=sae)
    if isinstance(sae, SparseAutoencoder):
        sae = {sae.layer: sae}
    if not isinstance(sae, Mapping) or not sae:
        what = "an empty mapping" if isinstance(sae, Mapping) else f"a {type(sae).__name__}"
        raise SAEError(f"sae= got {what}; it takes {SAE_ARGUMENT}.", _SAE_FIX)
    return SAESet({_layer_key(key, model): _one_sae(model, key, value) for key, value in sae.items()})


def _layer_key(key: Any, model: Any) -> int:
    if not is_int(key) or not 0 <= key < model.n_layers:
        raise SAEError(f"sae= has key {key!r}, which is not a layer of {model.name} (ints 0..{model.n_layers - 1}).",
                       "Key each SAE by its layer number: sae={sae.layer: sae}.")
    return int(key)


def _one_sae(model: Any, layer: int, value: Any) -> SparseAutoencoder:
    """The SAE `value` given for `layer` in a `sae=` mapping: a SparseAutoencoder or a folder."""
    if isinstance(value, (str, os.PathLike)):
        return load_sae(model, [layer], source=value)[layer]
    if not isinstance(value, SparseAutoencoder):
        raise SAEError(f"sae[{layer}] is a {type(value).__name__}, not an SAE; sae= takes {SAE_ARGUMENT}.", _SAE_FIX)
    if value.layer != layer:
        raise SAEError(f"sae[{layer}] is the SAE for layer {value.layer} (hook {value.info.hook_name}).",
                       "Key each SAE by its own layer: sae={sae.layer: sae}.")
    check_sae(value, f"sae[{layer}]")
    return value


def _require_model(model: Any) -> None:
    """A clear error for a `model` that is not a ModelHandle (None, a path, a bare nn.Module),
    before anything reads its layers or digest."""
    from ..models import ModelHandle

    if not isinstance(model, ModelHandle):
        raise ConfigError(
            f"load_sae needs the model as a ModelHandle, got {type(model).__name__}.",
            "Pass the handle load_model returned: load_sae(load_model('<model>'), layers=[...]).",
        )


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
    _check_train_k(cfg, model.d_model)
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
        check_finite(sae.tensors(), f"The SAE trained for layer {layer}", "Training diverged: lower SAETrainConfig.lr.")
        if save:
            folder = _cache_folder(model.digest, cfg, layer)

            def seal(tmp: Path, _layer: int = layer) -> None:
                write_json_atomic(tmp / _SEAL, _seal(tmp, model.digest, cfg, _layer))

            save_saelens(sae, folder, before_publish=seal)
            sae.info.source = str(folder)
        out[layer] = sae
    return out


def _check_train_k(cfg: SAETrainConfig, d_model: int) -> None:
    """Refuse a k no TopK SAE of the configured width can have, before the corpus is generated."""
    d_sae = cfg.expansion_factor * d_model
    if not (is_int(cfg.k) and 1 <= cfg.k <= d_sae):
        raise SAEError(f"SAETrainConfig k={cfg.k!r}: a TopK SAE of width {d_sae} (expansion_factor {cfg.expansion_factor} "
                       f"x d_model {d_model}) needs k from 1 to {d_sae}.", f"Set k between 1 and {d_sae} (default {SAETrainConfig.k}).")
