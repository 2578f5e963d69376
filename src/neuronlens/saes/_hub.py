"""SAEs from a Hugging Face hub repo id (``--sae org/name``), fetching only what is needed.

A repo that sae-lens's registry knows as one release is loaded as that release (its settings
applied); one shared by several releases is refused with their names. Any other repo is listed,
its SAE folders recognised by their families' file names, their small config files fetched to
learn each one's hook, and only the chosen SAEs' files fetched. Offline (HF_HUB_OFFLINE=1), the
repo's cached snapshot is searched as a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ..errors import SAEError
from ._families import FAMILIES, NOTHING, Family, Found, choose, load_folder
from ._releases import _snapshot, load_release
from ._sae import SparseAutoencoder

_HUB_FIX = ("Check the repo id, the network and, for a gated repo, your token (hf auth login); offline (HF_HUB_OFFLINE=1) "
            "the repo must already be in the hub cache. Or pass a local folder of SAEs.")


def releases_for_repo(repo_id: str) -> list[str]:
    return sorted(name for name, rel in _snapshot()["releases"].items() if rel["repo_id"] == repo_id)


def _hub_error(repo_id: str, exc: Exception) -> SAEError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return SAEError(f"SAE source {repo_id!r} is not a local folder and could not be fetched from the hub ({type(exc).__name__}: {first}).",
                    _HUB_FIX)


def candidates(paths: Sequence[str]) -> list[tuple[str, Family]]:
    """(folder, family) for every folder of a repo listing that holds all of a family's files."""
    present = set(paths)
    folders = {str(PurePosixPath(p).parent) for p in paths} | {"."}
    out = []
    for folder in sorted(folders):
        prefix = "" if folder == "." else f"{folder}/"
        family = next((f for f in FAMILIES if all(f"{prefix}{name}" in present for name in f.files)), None)
        if family is not None:
            out.append((folder, family))
    return out


def _download(repo_id: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns or ["__nothing__"]))
    except Exception as exc:  # noqa: BLE001 - hub errors vary; all mean "not available"
        raise _hub_error(repo_id, exc) from exc


def _files(folder: str, names: Sequence[str]) -> list[str]:
    return [name if folder == "." else f"{folder}/{name}" for name in names]


def load_hub_repo(repo_id: str, layers: Sequence[int]) -> dict[int, SparseAutoencoder]:
    """The SAEs for `layers` from hub repo `repo_id` (see the module docstring)."""
    names = releases_for_repo(repo_id)
    if len(names) == 1:
        return load_release(names[0], None, layers)
    if names:
        raise SAEError(f"{repo_id} holds the sae-lens releases {', '.join(names)}.",
                       f"Name the release instead of the repo: --sae {names[0]} (or {names[0]}:SAE_ID).")
    from huggingface_hub import HfApi
    from huggingface_hub.constants import is_offline_mode

    if is_offline_mode():
        return load_folder(_download(repo_id, ["*"]), layers, repo_id)
    try:
        listing = HfApi().list_repo_files(repo_id)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(repo_id, exc) from exc
    options = candidates(listing)
    configs = [f for folder, fam in options for f in _files(folder, fam.files[:1]) if fam.name != "gemma_scope"]
    root = _download(repo_id, configs)  # the small config files only: they name each SAE's hook
    found = [Found(root / folder, fam, fam.hook(root / folder, NOTHING)) for folder, fam in options]
    chosen = choose(found, layers, repo_id)
    for f in chosen.values():
        _download(repo_id, _files(f.folder.relative_to(root).as_posix(), f.family.files))
    return {layer: f.read() for layer, f in chosen.items()}
