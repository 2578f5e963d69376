"""Atomic file writing: a reader never sees a half-written file, and a failed write leaves
whatever was there before untouched. Sets of files (an audit's outputs, a model or SAE folder)
are published together by :func:`publish_dir`; :func:`lock_dir` keeps two writers out of one
folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: folders are not locked
    fcntl = None  # type: ignore[assignment]

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


_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space; over quota


def ensure_writable_dir(path: str | os.PathLike[str], *, choose: str = "choose a folder you can write to") -> Path:
    """Create `path` if needed and prove it is writable, so long work never starts for nothing.
    `choose` ends the error's fix: how the caller's user names another place (a CLI option, an
    argument)."""
    p = Path(path)
    if p.exists() and not p.is_dir():  # mkdir would say only "File exists"
        raise OutputError(f"Output folder {str(p)!r} cannot be written: it is a file, not a folder.", _sentence(choose))
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".nl-write-test-", delete=True):
            pass
    except OSError as exc:
        first = "Free space on that disk, or " if exc.errno in _DISK_FULL else ""
        raise OutputError(f"Output folder {str(p)!r} cannot be written: {exc.strerror or exc}.", _sentence(first + choose)) from exc
    return p


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


@contextmanager
def removed_if_left_empty(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Remove again the folders on the path to `folder` that did not exist before the block, should
    the block fail and leave them empty: a refused or failed run leaves the file system as it found
    it (an audit refused for a bad setting left an empty --out behind)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for p in created:
            try:
                p.rmdir()
            except OSError:  # the run wrote into it, or it is gone already
                break
        raise


def os_reason(exc: OSError) -> str:
    """What went wrong, for a message: the OS's reason and the file it concerned, when known
    (an ENOSPC from a write has no file name; formatting it gave '(None)')."""
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason


def check_free_space(folder: Path, need: int, what: str, choose: str) -> None:
    """Raise OutputError when the disk of `folder` has less than `need` bytes free: refused at the
    start, not after the long work that would have filled it."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputError(
            f"Only {free / 2**20:.1f} MiB is free on the disk of {folder}; {what} needs about {need / 2**20:.0f} MiB.",
            _sentence(f"Free space on that disk, or {choose}"),
        )


LOCK_NAME = ".neuronlens.lock"
"""The lock file a writer holds in its output folder while it runs; removed when it is done. One
left by a crashed run blocks nobody: the OS released its lock when the process died."""


@contextmanager
def lock_dir(folder: Path, who: str, choose: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (flock on its LOCK_NAME file) for the `with` block; a
    second holder is refused at once with OutputError naming the pid that holds it. On systems
    or filesystems without flock the block runs unlocked."""
    path = folder / LOCK_NAME
    fh, held = _open_locked(path, choose)
    with fh:
        if not held:
            fh.seek(0)
            pid = fh.read().strip()
            raise OutputError(f"Another {who} (pid {pid or 'unknown'}) is writing into {folder}.",
                              _sentence(f"Wait for it to finish, or {choose}"))
        _write_pid(fh)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still locked: a writer that opened this file finds it gone


def _open_locked(path: Path, choose: str) -> tuple[Any, bool]:
    """The lock file, opened, and whether this process now holds its lock. A file its holder
    removed between our open and our flock is no lock any more: open the path again."""
    while True:
        try:
            fh = open(path, "a+", encoding="utf-8")  # a+: never truncate the holder's pid
        except OSError as exc:
            raise OutputError(f"Cannot create the lock file {path}: {os_reason(exc)}.", _sentence(choose)) from exc
        if not _flock(fh):
            return fh, False
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                return fh, True
        except FileNotFoundError:
            pass
        fh.close()


def _flock(fh: Any) -> bool:
    """Take the lock without waiting; False when another open file holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # a filesystem without flock support
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    return True


def _write_pid(fh: Any) -> None:
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
    except OSError:  # the pid only informs a refused second writer; a full disk must not stop the run
        pass


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


@dataclass
class Publication:
    """What :func:`publish_dir` yields: the staging folder to write into; once the `with` block
    has ended, what was published and what was removed."""

    path: Path
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


@contextmanager
def publish_dir(
    target: str | os.PathLike[str], *, merge: bool = False, stale: Sequence[str] = (), keep: Callable[[Path], bool] | None = None
) -> Iterator[Publication]:
    """Write a set of files into a staging folder, then publish them all or none.

    Everything is written into `.path` before anything at `target` changes; publishing is renames
    only, which write no file data, so a full disk or a failed write leaves `target` as it was,
    the staging folder gone. A rename that still fails (a permission changed meanwhile) is undone.

    Without `merge`, `target` is a folder the writer owns: the staged folder replaces it whole
    (staged beside it), unless `keep(existing target)` is true, when the existing one stays.
    With `merge`, `target` is a folder shared with the user's files (the folder is staged inside it,
    so the renames stay on its filesystem, a mount point included): each staged file replaces its
    namesake, the files (or folders) named in `stale` that were not staged are removed (they
    described another run), and nothing else in `target` is touched. Between the first and the last rename a reader
    may see the set half-swapped; a crash there (power loss, SIGKILL) can leave it so."""
    target = Path(target)
    parent = target if merge else target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if merge:
        remove_stale_staging(parent)
    stage = make_temp_dir(parent, f"{_STAGING}.{os.getpid()}" if merge else target.name)
    pub = Publication(stage)
    try:
        yield pub
        if merge:
            _merge_into(pub, target, stale)
        elif keep is None or not (target.exists() and keep(target)):
            _replace_dir(stage, target)
            pub.written.append(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


_STAGING = "neuronlens-staging"
"""Stem of the hidden folder publish_dir(merge=True) stages files in: ``.neuronlens-staging.<pid>.<random>``."""


def remove_stale_staging(folder: Path) -> list[Path]:
    """Delete the staging folders in `folder` that a killed run left behind (their process is gone;
    a folder of the older naming, without a pid, counts as left behind), and return them. A live
    writer's folder is kept. Not on Windows, where no signal-0 probe of a pid exists."""
    if fcntl is None:
        return []
    stale = [p for p in folder.glob(f".{_STAGING}.*") if p.is_dir() and not p.is_symlink() and not _pid_alive(_staging_pid(p.name))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _staging_pid(name: str) -> int | None:
    parts = name.split(".")  # '', 'neuronlens-staging', pid, random
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _replace_dir(stage: Path, target: Path) -> None:
    """Rename `stage` to `target`; an existing `target` folder is moved aside first and deleted
    only once the new one is in place (put back if the rename fails). A file or link of that name
    is not replaced: the rename fails (NotADirectoryError), nothing deleted."""
    if not target.is_dir() or target.is_symlink():
        os.replace(stage, target)
        return
    aside = make_temp_dir(target.parent, f"{target.name}.old")
    _renames([(target, aside / target.name), (stage, target)], aside)


def _merge_into(pub: Publication, folder: Path, stale: Sequence[str]) -> None:
    """Move every staged file into `folder`, its old namesake and the stale files moved aside
    first (and deleted once all is in place). A staged folder (one fine-tune's reports in a
    multi-fine-tune audit) replaces its namesake folder whole, and a folder named in `stale` (a
    fine-tune not audited this time) goes: the caller checks beforehand that the old one holds
    only what it would write."""
    order = {n: i for i, n in enumerate(stale)}
    names = sorted((p.name for p in pub.path.iterdir()), key=lambda n: (order.get(n, len(order)), n))
    # folders that go: those a staged folder replaces, and stale ones not staged (checked by the caller too)
    dirs = {n for n in names if (pub.path / n).is_dir()} | {n for n in stale if n not in names}
    dirs = {n for n in dirs if (folder / n).is_dir() and not (folder / n).is_symlink()}
    old = [n for n in dict.fromkeys([*names, *stale]) if (folder / n).is_file() or (folder / n).is_symlink() or n in dirs]
    aside = make_temp_dir(folder, "neuronlens-replaced")
    _renames([*((folder / n, aside / n) for n in old), *((pub.path / n, folder / n) for n in names)], aside)
    _fsync_dir(folder)
    pub.written = [folder / n for n in names]
    pub.removed = [folder / n for n in old if n not in names]


def _renames(pairs: list[tuple[Path, Path]], aside: Path) -> None:
    """Rename each (src, dst) in order, then delete `aside` (what was moved out of the way). If
    a rename fails, the done ones are undone and the error raised; were an undo to fail too,
    `aside` is kept, so that no old file is lost."""
    done: list[tuple[Path, Path]] = []
    try:
        for src, dst in pairs:
            os.replace(src, dst)
            done.append((src, dst))
    except BaseException:
        for src, dst in reversed(done):
            os.replace(dst, src)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Make renames into `folder` durable (best effort: not every system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
