"""Saving and showing the drift figures: encoding a Figure as PNG, SVG or PDF bytes, checking a
save path's format and folder, and telling a notebook or a desktop from a headless run."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .._io import ensure_writable_dir
from ..errors import NeuronLensError, OutputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SAVE_FORMATS = ("png", "svg", "pdf")
NON_GUI_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def figure_bytes(fig: Figure, fmt: str, *, dpi: int = 150) -> bytes:
    """Encode a matplotlib Figure (PNG, SVG with text as paths, or PDF) without any GUI backend."""
    buf = io.BytesIO()
    # No timestamps inside the files: the same report gives the same SVG/PDF bytes.
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata)
    return buf.getvalue()


def format_from_path(path: Path) -> str:
    """The save format named by `path`'s suffix. A folder (``"."``), a name without a suffix
    (``"hm"``) or with another one (``"hm.jpg"``) is refused with the path itself quoted, so the
    caller sees what was wrong with it, and the formats listed."""
    formats = ", ".join("." + f for f in SAVE_FORMATS)
    if path.is_dir() or path.name in ("", ".", ".."):
        raise NeuronLensError(
            f"Cannot save a heatmap to {str(path)!r}: it is a folder, not a file name.",
            f"Pass a file path ending in {formats}, for example .save('heatmap.png').",
        )
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in SAVE_FORMATS:
        why = "the name has no suffix to tell the format" if not fmt else f"{path.suffix!r} is not a format it can be written in"
        raise NeuronLensError(
            f"Cannot save a heatmap as {str(path)!r}: {why}.",
            f"End the file name in {formats}, for example .save('{path.stem}.png').",
        )
    return fmt


def ensure_save_folder(folder: Path) -> None:
    """Create/check the folder of a `.save()` target. This is an API call, so the fix names the
    path argument rather than the CLI's ``--out`` option that :func:`ensure_writable_dir` suggests."""
    try:
        ensure_writable_dir(folder)
    except OutputError as exc:
        raise OutputError(exc.problem, "Pass .save() a path in a folder you can write to, for example .save('heatmap.png').") from exc


def check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt not in SAVE_FORMATS:
        raise NeuronLensError(
            f"Cannot save a heatmap as {fmt!r}.", f"Use a file name ending in one of: {', '.join('.' + f for f in SAVE_FORMATS)}."
        )
    return fmt


def in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def has_gui() -> bool:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import matplotlib

    backend = str(matplotlib.get_backend()).lower()
    return backend not in NON_GUI_BACKENDS and not backend.startswith("module://")
