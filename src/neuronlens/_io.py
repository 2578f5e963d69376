"""Atomic file writing: a reader never sees a half-written file, and a failed write leaves
whatever was there before untouched."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError, NeuronLensError, OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: Path, *, directory: bool = False) -> None:
    """Give a temp file/dir the permissions a normally created one would have (mkstemp and
    mkdtemp make them private), so atomically written outputs are readable like any other."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def make_temp_dir(parent: Path, name: str) -> Path:
    """A temporary folder beside `parent / name`, to be moved into place in one rename."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    public_mode(tmp, directory=True)
    return tmp


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and prove it is writable, so long work never starts for nothing."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".nl-write-test-", delete=True):
            pass
    except OSError as exc:
        raise OutputError(
            f"Output folder {str(p)!r} cannot be written: {exc.strerror or exc}.",
            "Choose a folder you can write to (for example --out ./neuronlens-out).",
        ) from exc
    return p


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        public_mode(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def write_with_atomic(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Run `writer(tmp_path)` (e.g. a library's save function) and move the result into place."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def read_user_text(path: Path, what: str, error: type[NeuronLensError] = ConfigError) -> str:
    """The text of a file the user gave (a concept, label, dataset or data file), decoded as UTF-8
    (a leading byte-order mark, as some editors save it, is dropped). A file in another encoding,
    or not text at all, raises `error` naming the file and the first byte that does not decode,
    not a raw UnicodeDecodeError; an unreadable one names the OS's reason."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}).",
            "Save the file as UTF-8 (a JSON/CSV export from an editor or spreadsheet usually has that option).",
        ) from exc
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}.", "Check the path and its permissions.") from exc


def check_output_targets(folder: Path, names: list[str]) -> None:
    """Raise OutputError, before any long work, when a file the run will write into `folder` is
    taken by something that is not a file (a folder of that name): the write would fail only at
    the end and leave the outputs of two runs side by side."""
    for name in names:
        target = folder / name
        if target.exists() and not target.is_file():
            raise OutputError(
                f"{target} exists and is not a file, so the audit could not write its {name} there.",
                f"Move or remove {target}, or choose another output folder (--out).",
            )


def remove_stale_outputs(folder: Path, candidates: list[str], written: list[Path]) -> list[Path]:
    """Remove the files among `candidates` in `folder` that this run did not write: they were left
    by an earlier run into the same folder and describe another audit (a certificate beside a
    report it does not certify). Returns what was removed."""
    keep = {Path(p).name for p in written}
    removed = []
    for name in candidates:
        path = folder / name
        if name not in keep and path.is_file():
            path.unlink()
            removed.append(path)
    return removed
