"""SAEs by sae-lens release name: ``RELEASE`` or ``RELEASE:SAE_ID[,SAE_ID...]``.

Names resolve through data/pretrained_saes.json, a trimmed snapshot of sae-lens's
``pretrained_saes.yaml`` (scripts/refresh_sae_registry.py rewrites it from an installed
sae-lens): release -> hub repo, converter and settings; SAE id -> path, hook, Neuronpedia id,
norm_scaling_factor. Only the chosen SAEs' own files are fetched (``hf_hub_download`` per file,
so a filled hub cache serves them with ``HF_HUB_OFFLINE=1``), then read by their family's reader
with the registry's settings applied (:class:`~._layout.Registered`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import SAEError
from ._families import REFUSED_CONVERTERS, Family, Found, Registered, check_registered, family_for_converter
from ._formats import layer_from_hook
from ._sae import SparseAutoencoder

SNAPSHOT = "data/pretrained_saes.json"


@dataclass(frozen=True)
class Entry:
    """One SAE of a release."""

    sae_id: str
    path: str
    hook: str | None
    neuronpedia: str | None = None
    norm_scaling_factor: float | None = None


@dataclass(frozen=True)
class Release:
    name: str
    repo_id: str
    model: str
    converter: str | None
    saes: dict[str, Entry]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    left_out: Mapping[str, int] = field(default_factory=dict)
    """Per hook site (or "all"), how many of the release's SAEs the snapshot leaves out: they read
    a site NeuronLens does not feed, or the release's converter is refused."""


@cache
def _snapshot() -> dict[str, Any]:
    text = resources.files("neuronlens.saes").joinpath(SNAPSHOT).read_text(encoding="utf-8")
    return json.loads(text)


def release_names() -> list[str]:
    return sorted(_snapshot()["releases"])


def get_release(name: str) -> Release | None:
    raw = _snapshot()["releases"].get(name)
    if raw is None:
        return None
    saes = {s[0]: Entry(s[0], s[1] or s[0], s[2], s[3], s[4]) for s in raw["saes"]}
    return Release(name, raw["repo_id"], raw["model"], raw["converter"], saes, raw.get("overrides") or {}, raw.get("left_out") or {})


def parse_spec(spec: str) -> tuple[str, list[str] | None] | None:
    """(release, sae ids or None) when `spec` is ``RELEASE`` or ``RELEASE:ID[,ID...]`` of a known
    release; None otherwise (a folder or a hub repo id)."""
    name, sep, ids = spec.partition(":")
    if get_release(name) is None:
        return None
    chosen = [i.strip() for i in ids.split(",") if i.strip()] if sep else None
    return name, chosen or None


def family_of_release(release: Release) -> Family:
    """The family that reads the release's files; an SAEError naming the converter when none does."""
    family = family_for_converter(release.converter)
    if family is None:
        what = REFUSED_CONVERTERS.get(str(release.converter), f"SAEs converted by sae-lens's {release.converter!r} loader")
        raise SAEError(f"Release {release.name!r} holds {what}; NeuronLens cannot audit with them.",
                       "Choose a release of residual-stream SAEs in SAELens, sparsify, Gemma Scope, Gemma Scope 2 or Llama Scope format.")
    return family


def _layer(entry: Entry) -> int | None:
    try:
        return layer_from_hook(entry.hook, entry.sae_id) if entry.hook else None
    except SAEError:
        return None


def choose_entries(release: Release, sae_ids: Sequence[str] | None, layers: Sequence[int] | None) -> list[Entry]:
    """The release's SAEs named by `sae_ids`, else the one for each of `layers`; an SAEError for
    an unknown id, a layer with none or with several (listing them)."""
    if sae_ids:
        return [_entry(release, sae_id) for sae_id in sae_ids]
    if not layers:
        raise SAEError(f"Release {release.name!r} holds {len(release.saes)} SAEs; which to use is not given.",
                       f"Name one: --sae {release.name}:SAE_ID (or sae_id=), or give --layers.")
    by_layer: dict[int, list[Entry]] = {}
    for e in release.saes.values():
        layer = _layer(e)
        if layer is not None:
            by_layer.setdefault(layer, []).append(e)
    return [_one_for_layer(release, layer, by_layer.get(layer, []), sorted(by_layer)) for layer in layers]


def _one_for_layer(release: Release, layer: int, options: list[Entry], have: list[int]) -> Entry:
    if len(options) == 1:
        return options[0]
    if not options:
        extra = f" ({_left_out(release)})" if release.left_out else ""
        raise SAEError(f"Release {release.name!r} has no residual-stream SAE for layer {layer} (it has layers {have}){extra}.",
                       "Audit layers it covers (--layers), or choose another release.")
    ids = ", ".join(e.sae_id for e in options[:12]) + (", ..." if len(options) > 12 else "")
    raise SAEError(f"Release {release.name!r} has {len(options)} SAEs for layer {layer}: {ids}.",
                   f"Choose one: --sae {release.name}:{options[0].sae_id} (several: ID1,ID2), or sae_id= in Python.")


def _entry(release: Release, sae_id: str) -> Entry:
    if sae_id in release.saes:
        return release.saes[sae_id]
    if release.left_out:
        problem = f"Release {release.name!r} has no residual-stream SAE {sae_id!r} ({_left_out(release)})."
    else:
        problem = f"Release {release.name!r} has no SAE {sae_id!r}."
    close = difflib.get_close_matches(sae_id, list(release.saes), n=3)
    hint = f"Did you mean {', '.join(close)}?" if close else f"Its SAE ids start {', '.join(list(release.saes)[:3])}."
    raise SAEError(problem, f"{hint} Use --sae {release.name}:SAE_ID with one of its ids.")


def _left_out(release: Release) -> str:
    sites = ", ".join(f"{n} reading {site}" if site != "all" else f"{n}" for site, n in release.left_out.items())
    return f"left out as NeuronLens cannot feed them: {sites}"


def fetch(release: Release, family: Family, entry: Entry) -> Path:
    """The folder holding `entry`'s files, fetching only those (its family's files) from the hub."""
    from huggingface_hub import hf_hub_download

    local = None
    for name in family.files:
        try:
            got = hf_hub_download(repo_id=release.repo_id, filename=f"{entry.path}/{name}")
        except Exception as exc:  # noqa: BLE001 - hub errors vary: offline, gated, missing, network
            raise SAEError(
                f"Could not fetch {entry.path}/{name} of {release.repo_id} (release {release.name}) from the Hugging Face hub: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                "Check the network and, for a gated repo, your token (hf auth login); offline (HF_HUB_OFFLINE=1) the files "
                "must already be in the hub cache (HF_HUB_CACHE).",
            ) from exc
        local = local or Path(got).parent
    assert local is not None
    return local


def load_release(name: str, sae_ids: Sequence[str] | None, layers: Sequence[int] | None) -> dict[int, SparseAutoencoder]:
    """The SAEs of release `name` (by `sae_ids`, else one per layer of `layers`), keyed by layer."""
    release = get_release(name)
    if release is None:
        raise SAEError(f"{name!r} is not a release in sae-lens's registry (snapshot {_snapshot()['source']}).",
                       "Give a release name from sae-lens's pretrained SAEs list, a folder of SAEs, or a hub repo id.")
    family = family_of_release(release)
    out: dict[int, SparseAutoencoder] = {}
    for entry in choose_entries(release, sae_ids, layers):
        sae = _found(release, family, entry).read()
        if sae.layer in out:
            raise SAEError(f"Release {name!r}: SAEs {out[sae.layer].info.source} and {sae.info.source} both read layer {sae.layer}.",
                           "Choose one SAE per layer.")
        out[sae.layer] = sae
    return out


def _found(release: Release, family: Family, entry: Entry) -> Found:
    reg = Registered(hook=entry.hook, norm_scaling_factor=entry.norm_scaling_factor, overrides=release.overrides,
                     label=f"{release.name}:{entry.sae_id}")
    check_registered(reg, Path(entry.path))  # refused settings and hooks stop before anything is downloaded
    if entry.hook and isinstance(layer := Found(Path(entry.path), family, entry.hook, reg).layer(), SAEError):
        raise layer
    folder = fetch(release, family, entry)
    return Found(folder, family, family.hook(folder, reg), reg)


def release_spec(source: Any, release: str | None, sae_id: str | Sequence[str] | None) -> tuple[str, list[str] | None] | None:
    """(release, sae ids) when `load_sae` is asked for a release: by `release=` (and `sae_id=`),
    or by a `source` string that is not an existing path and names a release (RELEASE[:ID,...])."""
    ids = [sae_id] if isinstance(sae_id, str) else (list(sae_id) if sae_id is not None else None)
    if release is not None:
        if source is not None:
            raise SAEError(f"load_sae got both source={source!r} and release={release!r}.", "Pass one of them.")
        return release, ids or None
    if ids:
        raise SAEError(f"load_sae got sae_id={sae_id!r} without release=.", "Pass release='<sae-lens release>' with it.")
    if isinstance(source, str) and not Path(source).expanduser().exists():
        return parse_spec(source)
    return None


def pick(saes: Mapping[int, SparseAutoencoder], layers: Sequence[int], label: str) -> dict[int, SparseAutoencoder]:
    """The SAEs of `saes` for `layers`; an SAEError naming the layers the named SAEs do not cover."""
    missing = [layer for layer in layers if layer not in saes]
    if missing:
        raise SAEError(f"{label} has no SAE for layer(s) {missing} (the SAEs chosen read layers {sorted(saes)}).",
                       f"Audit layers {sorted(saes)} (--layers), or name SAEs for the missing layers (RELEASE:ID1,ID2).")
    return {layer: saes[layer] for layer in layers}
