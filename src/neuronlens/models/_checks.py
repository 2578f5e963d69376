"""Checks that a checkpoint is whole before it is audited.

transformers fills a tensor missing from a checkpoint with random values (saying so only in a load
report on stderr), loads NaN weights without a word, and reports a truncated or corrupt file with a
traceback. An audit of such a model measures nothing, so each of these is a :class:`ModelLoadError`
naming the problem and the fix. When the handle is made (no weights loaded): the JSON files, every
safetensors header (a truncated file fails there), the tensor names against a weightless
(meta-device) copy of the architecture, and an adapter's own tensors (read in full: finite, and
every tensor its config declares for its base present). When two models are compared: their
architectures, and an adapter's tensor shapes against its base. When the weights load:
transformers' loading report (missing or mismatched tensors) and every weight's finiteness.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ._peft import peft_wrap_quietly

SHOWN = 5
"""How many tensor names an error lists before '... (N in all)'."""

REDOWNLOAD = "Download or copy the checkpoint again (the file is truncated or corrupt), or re-save it with save_pretrained."
ADAPTER_RESAVE = "Save the adapter again with peft's save_pretrained (or download it again): the file is truncated or corrupt."


def _few(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:SHOWN])
    return shown if len(names) <= SHOWN else f"{shown}, ... ({len(names)} in all)"


# -- files (when the handle is made) -------------------------------------------------------------


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in `path`, or a ModelLoadError saying it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}.", fix) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a JSON {type(data).__name__}, not an object.", fix)
    return data


def safetensors_keys(path: Path, fix: str = REDOWNLOAD) -> list[str]:
    """The tensor names in a safetensors file's header; the header is parsed and checked against
    the file's size (a truncated file fails here), no tensor data is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}.", fix) from exc


def check_folder_files(folder: Path) -> None:
    """config.json is a JSON object, every *.safetensors header is whole, and every shard a
    safetensors index names is present."""
    read_json_object(folder / "config.json", "Restore the model's config.json (save_pretrained writes it), or download the checkpoint again.")
    for path in sorted(folder.glob("*.safetensors")):
        safetensors_keys(path)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        _check_index(index)


def check_tensors_present(handle: Any) -> None:
    """Refuse a safetensors folder (a ModelHandle) that lacks tensors its architecture needs, from
    the headers alone, so that it fails before any long work rather than when its weights load.
    Best effort: where the checkpoint's names are not the model's own (renamed, prefixed, or the
    model cannot be built weightless) it says nothing and the load's own report decides."""
    files = sorted(handle.path.glob("*.safetensors"))
    try:
        model = _meta_model(handle) if files else None
    except ModelLoadError:  # an unreadable config is reported where it is read
        return
    if model is None:
        return
    keys = {k for f in files for k in safetensors_keys(f)}
    expected = _expected_keys(model)
    if keys <= expected and expected - keys:
        check_loading_info({"missing_keys": expected - keys}, handle.source)


def _expected_keys(model: nn.Module) -> set[str]:
    """The state-dict names a checkpoint of `model` must hold: tied copies and the names the
    architecture itself lets be absent (`_keys_to_ignore_on_load_missing`) excepted."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    return {k for k in model.state_dict() if k not in tied and not any(r.search(k) for r in ignore)}


def _check_index(index: Path) -> None:
    weight_map = read_json_object(index, REDOWNLOAD).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelLoadError(f"{index} has no 'weight_map' object.", REDOWNLOAD)
    absent = {str(s) for s in weight_map.values() if not (index.parent / str(s)).is_file()}
    if absent:
        raise ModelLoadError(f"{index} names shard(s) that are not in the folder: {_few(absent)}.", "Download every shard of the checkpoint.")


# -- weights (when they load) -------------------------------------------------------------------


def nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (tensors on the meta
    device, i.e. offloaded by a device_map, are skipped): a NaN makes a tensor's minimum and
    maximum NaN, an infinity one of them. Measured on SmolLM2-135M (274 tensors, 134.5M float32
    values) on 2 CPU cores shared with other jobs (load average 7-10), 7 rounds each: fastest
    85-130 ms, median 300-840 ms, against a fastest 170 ms for a float32 sum per tensor and 2.4 s
    for `torch.isfinite(t).all()` (a full bool copy); loading the model from the dequantized
    cache took 1.3-2.5 s in the same runs."""
    named = [(n, t.detach()) for n, t in tensors if t.is_floating_point() and t.device.type != "meta" and t.numel()]
    return [n for n, t in named if not bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())]


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str, fix: str) -> None:
    bad = nonfinite(tensors)
    if bad:
        raise ModelLoadError(f"{what} has NaN or infinite values in {len(bad)} tensor(s): {_few(bad)}.", fix)


def check_model_finite(model: nn.Module, source: str) -> None:
    """Every parameter and buffer of a loaded model is finite."""
    tensors = [*model.named_parameters(remove_duplicate=True), *model.named_buffers(remove_duplicate=True)]
    check_finite(tensors, f"The model {source!r}", "Audit a checkpoint with finite weights: the fine-tune diverged or the file was damaged; use an earlier or re-saved checkpoint.")


def check_loading_info(info: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint transformers loaded only in part (missing tensors: filled at random;
    mismatched shapes); warn about tensors it ignored. Tied weights are not missing (transformers
    does not list them)."""
    missing = info.get("missing_keys") or ()
    if missing:
        raise ModelLoadError(
            f"{source!r} is incomplete: {len(missing)} tensor(s) its architecture needs are not in the checkpoint "
            f"({_few(missing)}); transformers would fill them with random values.",
            "Audit the complete checkpoint: download or copy all of its files again, or re-save it with save_pretrained.",
        )
    mismatched = info.get("mismatched_keys") or ()
    if mismatched:
        shapes = [f"{k} {tuple(c)} vs {tuple(m)}" for k, c, m in sorted(mismatched, key=lambda x: x[0])]
        raise ModelLoadError(
            f"{source!r} has {len(shapes)} tensor(s) whose shape does not fit its config.json (checkpoint vs config): {_few(shapes)}.",
            "Use the config.json that was saved with these weights.",
        )
    unexpected = info.get("unexpected_keys") or ()
    if unexpected:
        warnings.warn(f"{source!r}: {len(unexpected)} tensor(s) in the checkpoint are not part of the model and were ignored: {_few(unexpected)}.", stacklevel=3)


# -- PEFT adapters (when the handle is made) ---------------------------------------------------


def adapter_weights_file(folder: Path) -> Path | None:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def check_adapter_weights(path: Path) -> set[str]:
    """The adapter's tensor names, after checking that the file is whole and every tensor finite
    (the adapter is read in full: it is small next to its base)."""
    if path.suffix == ".safetensors":
        safetensors_keys(path, ADAPTER_RESAVE)
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    else:
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure: the file cannot be used
            raise ModelLoadError(f"{path} is not a readable PyTorch file: {exc}.", ADAPTER_RESAVE) from exc
    check_finite(tensors.items(), f"The adapter {path.parent}", "Use an adapter with finite weights: the fine-tune diverged or the file was damaged.")
    return set(tensors)


_DECLARED: dict[tuple[Any, ...], dict[str, tuple[int, ...]] | None] = {}


def declared_tensors(folder: Path, base: Any) -> dict[str, tuple[int, ...]] | None:
    """Name -> shape of every tensor the adapter in `folder` declares for `base` (a ModelHandle),
    from a weightless (meta-device) copy of the base; once per adapter config and base. None
    where the base cannot be built weightless. Raises when the adapter does not fit the base."""
    key = (str(folder.resolve()), (folder / "adapter_config.json").stat().st_mtime_ns, base.digest)
    if key not in _DECLARED:
        _DECLARED[key] = _declare(folder, base)
    return _DECLARED[key]


def _declare(folder: Path, base: Any) -> dict[str, tuple[int, ...]] | None:
    from peft import get_peft_model_state_dict

    config = _peft_config(folder)
    model = _meta_model(base)
    peft_model = None if model is None else _weightless_peft(model, config, folder, base)
    if peft_model is None:
        return None  # the load itself will tell
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}


def check_adapter_fits(folder: Path, keys: set[str], base: Any) -> None:
    """The adapter's target modules exist in `base` (a ModelHandle) and its weights hold every
    tensor its config declares for that base."""
    declared = declared_tensors(folder, base)
    missing = set(declared) - keys if declared is not None else set()
    if declared and missing:
        raise ModelLoadError(
            f"Adapter {str(folder)!r} is incomplete: {len(missing)} of the {len(declared)} tensors its adapter_config.json "
            f"declares for {base.source!r} are not in its weights ({_few(missing)}).",
            "Save the adapter again with peft's save_pretrained (or download it again); if it was trained on another "
            f"base model than {base.source!r}, pass that one (--ft-base on the CLI, base=... in Python).",
        )


def check_adapter_shapes(ft: Any) -> None:
    """Refuse an adapter (a ModelHandle) whose tensors' shapes are not those its base needs (it
    was trained on a base of another width): peft would fail only when it is applied."""
    weights = adapter_weights_file(ft.path)
    declared = declared_tensors(ft.path, ft.base) if weights is not None and weights.suffix == ".safetensors" else None
    if not declared:
        return
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    wrong = [f"{k} {shapes[k]} vs {v}" for k, v in sorted(declared.items()) if k in shapes and shapes[k] != v]
    if wrong:
        raise ModelLoadError(
            f"Adapter {ft.name!r} does not fit its base {ft.base.source!r}: {len(wrong)} tensor(s) have other shapes "
            f"than the base needs (adapter vs base): {_few(wrong)}.",
            "Pass the base model this adapter was trained on (--ft-base on the CLI, base=... in Python).",
        )


def _peft_config(folder: Path) -> Any:
    import peft

    try:
        config = peft.PeftConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ModelLoadError(
            f"{folder / 'adapter_config.json'} is not an adapter config peft {peft.__version__} can read: {exc!r}.",
            "Save the adapter again with peft's save_pretrained (or upgrade peft, if a newer one wrote it).",
        ) from exc
    config.base_model_name_or_path = None  # else peft warns that the (weightless) base is another model
    if hasattr(config, "init_lora_weights"):
        config.init_lora_weights = True  # the tensors' names do not depend on it; PiSSA-like inits need real weights
    return config


def _weightless_peft(model: nn.Module, config: Any, folder: Path, base: Any) -> nn.Module | None:
    """`model` (meta device) wrapped by the adapter's config; None where peft cannot do it
    without weights. A ValueError is peft's word that the adapter does not fit the model."""
    from peft import get_peft_model

    try:
        with torch.device("meta"), peft_wrap_quietly():
            return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelLoadError(
            f"Adapter {str(folder)!r} does not fit the base model {base.source!r}: {exc}",
            f"Pass the base model this adapter was trained on instead of {base.source!r} (--ft-base on the CLI, base=... in Python).",
        ) from exc
    except Exception:  # noqa: BLE001 - only a pre-check: loading reports real problems
        return None


def _meta_model(base: Any) -> nn.Module | None:
    from transformers import AutoModelForCausalLM

    config = base.config
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=base.trust_remote_code)
    except Exception:  # noqa: BLE001 - only a pre-check: loading reports real problems
        return None


# -- two models ---------------------------------------------------------------------------------


def architecture(config: Any) -> tuple[str | None, tuple[str, ...]]:
    """(model_type, architectures) of a transformers config."""
    return getattr(config, "model_type", None), tuple(getattr(config, "architectures", None) or ())


def check_fine_tune_fits(base: Any, ft: Any) -> None:
    """Refuse a fine-tune (a ModelHandle) of another architecture than `base`: equal layer counts,
    widths and vocabularies do not make a GPT-2 a fine-tune of a Llama; and a PEFT adapter whose
    tensors do not fit its own base."""
    (bt, barch), (ft_type, farch) = architecture(base.config), architecture(ft.config)
    if bt != ft_type or (barch and farch and barch != farch):
        raise ModelLoadError(
            f"Base ({base.name}: {bt}, {'/'.join(barch) or 'architecture not recorded'}) and fine-tuned "
            f"({ft.name}: {ft_type}, {'/'.join(farch) or 'architecture not recorded'}) are different architectures.",
            "Audit a fine-tune against the base model it was fine-tuned from.",
        )
    if ft.kind == "peft" and ft.base is not None:
        check_adapter_shapes(ft)
