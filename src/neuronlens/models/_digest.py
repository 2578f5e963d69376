"""Content digests of model checkpoints, compatible with OpenSSF model signing.

Each file's sha256 is streamed (never a whole file in memory); files are named by their POSIX
path relative to the model root; the manifest digest is sha256 over the raw per-file digests
concatenated in sorted path order, which is how the `model-signing` package forms the subject
digest of its in-toto statement, so a user can cross-check ours with its tools.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20
# Git metadata is not part of a model (model-signing ignores it too).
_IGNORED_NAMES = frozenset({".git", ".gitattributes", ".gitignore", ".github", ".cache", "__pycache__"})


@dataclass(frozen=True)
class FileDigest:
    path: str
    """POSIX path relative to the model root."""
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """Per-file digests of one model (or adapter) and the digest over all of them."""

    root: str
    files: tuple[FileDigest, ...]

    @property
    def digest(self) -> str:
        return manifest_digest(self.files)

    def to_dict(self) -> dict[str, object]:
        return {
            "manifest_sha256": self.digest,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(files: tuple[FileDigest, ...] | list[FileDigest]) -> str:
    h = hashlib.sha256()
    # model-signing orders by path components, not by the whole string ("tokenizer/x" after
    # "tokenizer.json" by string, before it by components): follow it so subject digests match.
    for f in sorted(files, key=_path_key):
        h.update(bytes.fromhex(f.sha256))
    return h.hexdigest()


def _iter_files(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_NAMES)
        for name in sorted(filenames):
            if name in _IGNORED_NAMES:
                continue
            out.append(Path(dirpath) / name)
    return out


def digest_paths(root: str | os.PathLike[str], paths: list[Path] | None = None) -> Manifest:
    """Digest every file under `root` (a folder), or just `paths` (files under `root`), or the
    single file `root` itself (then its path in the manifest is its file name)."""
    root_p = Path(root)
    if root_p.is_file():
        base, files = root_p.parent, [root_p]
    else:
        base, files = root_p, paths if paths is not None else _iter_files(root_p)
    # relpath, not resolve(): hub-cache snapshots are symlinks into a blob store.
    digests = tuple(
        FileDigest(Path(os.path.relpath(p, base)).as_posix(), sha256_file(p), p.stat().st_size) for p in files
    )
    return Manifest(root=str(root_p), files=tuple(sorted(digests, key=_path_key)))


def _path_key(f: FileDigest) -> tuple[str, ...]:
    return PurePosixPath(f.path).parts
