"""Ed25519 keys for signing certificates: make a pair, load either half, name a key by its id.

Private keys are PEM (PKCS#8), public keys PEM (SubjectPublicKeyInfo), the formats `openssl`
and most tools read. An encrypted private key is opened with the passphrase in the environment
variable ``NEURONLENS_KEY_PASSPHRASE``. The key id is the sha256 of the raw 32-byte public key
(hex), so anyone holding the public key can tell which key signed a certificate.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._io import ensure_writable_dir, os_reason, publish_dir, removed_if_left_empty, write_bytes_atomic
from ..errors import OutputError
from ._errors import SigningKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PASSPHRASE_ENV = "NEURONLENS_KEY_PASSPHRASE"
DEFAULT_KEY_STEM = "neuronlens-signing"
"""File name stem of a key pair written into a folder (``--out keys/``): keys/neuronlens-signing.key/.pub."""


@dataclass(frozen=True)
class KeyPair:
    """Where :func:`write_keypair` put the two halves, and the key id."""

    private_key: Path
    public_key: Path
    keyid: str


def key_id(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def key_prefix(prefix: str | Path) -> Path:
    """Where a key pair for `prefix` goes: an existing folder, or a path ending in a slash, means
    ``<folder>/neuronlens-signing`` (the pair is written inside it, not beside it as
    ``<folder>.key``, which "keys/" turned into before); anything else is the prefix itself."""
    text = os.fspath(prefix)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        return path / DEFAULT_KEY_STEM
    return path


def write_keypair(prefix: str | Path, *, force: bool = False) -> KeyPair:
    """Make a new Ed25519 key pair: ``<prefix>.key`` (private, mode 0600) and ``<prefix>.pub``
    (inside `prefix` as ``neuronlens-signing.key/.pub`` when it is a folder or ends in a slash).
    Existing files are kept unless `force`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    prefix = key_prefix(prefix)
    priv_path, pub_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    folders = [str(p) for p in (priv_path, pub_path) if p.is_dir()]
    if folders:  # --force cannot replace a folder with a key file
        raise SigningKeyError(f"{', '.join(folders)} is a folder, not a key file.", "Move it away, or choose another --out.")
    existing = [str(p) for p in (priv_path, pub_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise SigningKeyError(f"Key file(s) already exist: {', '.join(existing)}.", "Choose another --out, or pass --force to replace them.")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    with removed_if_left_empty(priv_path.parent):
        ensure_writable_dir(priv_path.parent)
        try:  # both halves or neither: a lone .key whose .pub failed would be a pair no verifier can use
            with publish_dir(priv_path.parent, merge=True) as staged:
                _write_private(staged.path / priv_path.name, private_pem)
                write_bytes_atomic(staged.path / pub_path.name, public_pem)
        except OSError as exc:
            raise OutputError(f"Could not write the key pair {priv_path}, {pub_path}: {os_reason(exc)}. Neither file was written "
                              "(any earlier pair there is untouched).", "Free space on that disk or fix its permissions, or choose "
                              "another path prefix.") from exc
    return KeyPair(priv_path, pub_path, key_id(key.public_key()))


def _write_private(path: Path, data: bytes) -> None:
    """Atomic like the other writers, but the file is owner-only (0600) from its first byte to
    the end (the shared atomic writers give files normal, readable permissions)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise SigningKeyError(
            f"Cannot read the {what} {str(p)!r}: {exc.strerror or exc}.", "Pass the path of a PEM key file made by `neuronlens keygen`."
        ) from exc


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file `path`, or a clear error saying what is wrong."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read(path, "signing key")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise SigningKeyError(f"{path} is a public key; signing needs the private half.", "Pass the .key file, not the .pub file.")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError as exc:
        raise SigningKeyError(
            f"The signing key {path} is encrypted and no passphrase was given.", f"Set {PASSPHRASE_ENV} to its passphrase."
        ) from exc
    except ValueError as exc:
        if passphrase and b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:  # it told a wrong passphrase from damage
            raise SigningKeyError(f"The signing key {path} is encrypted, and the passphrase in {PASSPHRASE_ENV} does not "
                                  f"open it ({exc}).", f"Set {PASSPHRASE_ENV} to that key's passphrase.") from exc
        raise SigningKeyError(
            f"The signing key {path} is corrupt, not PEM, or its passphrase is wrong ({exc}).",
            "Pass a PEM private key made by `neuronlens keygen` (or openssl genpkey -algorithm ed25519).",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"The signing key {path} is a {type(key).__name__.removeprefix('_')}, not an Ed25519 key.",
            "Make an Ed25519 key pair with `neuronlens keygen`.",
        )
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file `path`. A private key file is refused: verifying
    needs only the public half, and a private key passed around to verifiers is a leaked key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read(path, "public key")
    if b"PRIVATE KEY-----" in data:
        pub = Path(path).with_suffix(".pub")
        raise SigningKeyError(
            f"{path} is a PRIVATE key; verifying needs the public key (and the private one should never leave its owner).",
            f"Pass the .pub file made by `neuronlens keygen` with it{f' ({pub})' if pub.is_file() else ''}.",
        )
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(
            f"The public key {path} is corrupt or not PEM ({exc}).", "Pass the .pub file made by `neuronlens keygen` with the signing key."
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(
            f"The public key {path} is a {type(key).__name__.removeprefix('_')}, not an Ed25519 key.",
            "Pass the Ed25519 .pub file made by `neuronlens keygen`.",
        )
    return key
