"""in-toto Statement v1 in a DSSE envelope, signed with Ed25519.

DSSE (https://github.com/secure-systems-lab/dsse, protocol v1): the signature covers
``PAE(payloadType, payload)`` = ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` with LEN
the decimal byte length, so the payload type cannot be swapped. ``payload`` and ``sig`` are
standard base64. An unsigned certificate has ``"signatures": []``.

The certificate file is written as the envelope in JSON with sorted keys and two-space
indentation plus a final newline (so the same certificate gives the same bytes). That layout is
not signed: a reader checks the signed content - the payload's bytes, base64-decoded, and its
type - so an envelope another tool re-serialised still verifies, and any change to the payload,
its type or the signature fails.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._body import canonical_json, subjects
from ._schema import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def make_statement(body: dict[str, Any]) -> dict[str, Any]:
    """The in-toto Statement v1: the fine-tuned model's files as subjects, the body as predicate."""
    return {"_type": STATEMENT_TYPE, "subject": subjects(body), "predicateType": PREDICATE_TYPE, "predicate": body}


def make_envelope(statement: dict[str, Any], key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
    """The DSSE envelope of `statement`, signed with `key` when given."""
    from ._keys import key_id

    payload = canonical_json(statement)
    signatures = []
    if key is not None:
        sig = key.sign(pae(PAYLOAD_TYPE, payload))
        signatures.append({"keyid": key_id(key.public_key()), "sig": b64encode(sig)})
    return {"payloadType": PAYLOAD_TYPE, "payload": b64encode(payload), "signatures": signatures}


def envelope_file_bytes(envelope: dict[str, Any]) -> bytes:
    """The exact bytes of a certificate file holding `envelope`."""
    return (json.dumps(envelope, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: Any) -> bytes | None:
    """Standard base64 that re-encodes to exactly `text` (so no character can change unnoticed),
    else None."""
    if not isinstance(text, str):
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if b64encode(data) == text else None


@dataclass(frozen=True)
class SignatureCheck:
    """Outcome of checking an envelope's signatures with one public key."""

    status: str
    """'valid', 'invalid', 'unsigned', 'other-key' (signed, but by a different key) or 'corrupt'."""
    keyids: tuple[str, ...]
    detail: str


def check_signatures(envelope: dict[str, Any], payload: bytes, public_key: Ed25519PublicKey) -> SignatureCheck:
    """Does any signature of `envelope` verify over PAE(payloadType, payload) with `public_key`?"""
    from cryptography.exceptions import InvalidSignature

    from ._keys import key_id

    want = key_id(public_key)
    sigs = envelope.get("signatures") or []
    keyids = tuple(str(s.get("keyid", "")) for s in sigs if isinstance(s, dict))
    if not sigs:
        return SignatureCheck("unsigned", keyids, "the certificate is unsigned, but a public key was given")
    mine = [s for s in sigs if isinstance(s, dict) and s.get("keyid") == want]
    if not mine:
        return SignatureCheck(
            "other-key", keyids, f"the certificate was signed by key id(s) {', '.join(k[:16] for k in keyids)}, not by the given public key ({want[:16]})"
        )
    message = pae(str(envelope.get("payloadType")), payload)
    for s in mine:
        raw = b64decode_strict(s.get("sig"))
        if raw is None or len(raw) != 64:
            return SignatureCheck("corrupt", keyids, "the signature is corrupt (not a 64-byte base64 Ed25519 signature)")
        try:
            public_key.verify(raw, message)
            return SignatureCheck("valid", keyids, f"Ed25519 signature by key id {want[:16]} is valid")
        except InvalidSignature:
            continue
    return SignatureCheck(
        "invalid", keyids, "the signature does not match the signed content: the payload, its type or the signature changed"
    )
