"""What an SAE family is (:class:`Family`: the files that identify one SAE's folder, the hook it
reads, its reader) and what sae-lens's registry adds to an SAE's own files (:class:`Registered`,
:data:`NOTHING` for a folder given directly), with :func:`check_registered` refusing registry
settings that change what the SAE reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._norm import check_processing, input_scale
from ._sae import SparseAutoencoder


@dataclass(frozen=True)
class Registered:
    """What sae-lens's registry adds to an SAE's own files (empty for a folder given directly)."""

    hook: str | None = None
    """The hook the registry implies (Gemma Scope's files do not say which site they read)."""
    norm_scaling_factor: float | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """The release's ``config_overrides`` (normalisation, TransformerLens processing...)."""
    label: str | None = None
    """``release:sae_id``, recorded as the SAE's source."""


NOTHING = Registered()


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    files: tuple[str, ...]
    """Paths, relative to one SAE's folder, that all exist in this family's layout."""
    hook: Callable[[Path, Registered], str]
    """The TransformerLens hook the SAE reads, from its small files or its path."""
    read: Callable[[Path, Registered], SparseAutoencoder]
    converters: tuple[str, ...] = ()
    """sae-lens's ``conversion_func`` names for releases in this layout."""

    def matches(self, folder: Path) -> bool:
        return all((folder / f).is_file() for f in self.files)


def check_registered(reg: Registered, folder: Path) -> None:
    """Registry settings that decide what the SAE reads: TransformerLens processing, normalisation."""
    where = f"{reg.label or folder}"
    check_processing(reg.overrides.get("model_from_pretrained_kwargs"), where)
    if "normalize_activations" in reg.overrides:
        input_scale(reg.overrides["normalize_activations"], where, reg.norm_scaling_factor)
