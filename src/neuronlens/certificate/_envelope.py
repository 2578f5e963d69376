"""Reading a certificate's DSSE envelope for verification: its fields, checked for shape, with
a file that is no certificate at all (bad input) told apart from one that was cut or altered (a
failed verification)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import CertificateError
from ._schema import PAYLOAD_TYPE

if TYPE_CHECKING:
    from ._verify import VerificationResult

_ENVELOPE_KEYS = {"payload", "payloadType", "signatures"}


def read_envelope(raw: bytes, res: VerificationResult) -> dict[str, Any] | None:
    """The envelope's fields. Its layout (whitespace, key order, escaping, a UTF-8 byte order
    mark) is not signed and may differ from the form NeuronLens writes; what counts is the
    signed payload. A field given twice is refused: JSON readers disagree on which copy wins,
    so two tools could then verify one payload and read another."""
    try:
        envelope = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_no_duplicate_fields)
    except _DuplicateField as exc:
        res.changed.append(f"the certificate file gives the field {exc.name!r} twice (which copy counts is ambiguous)")
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if not _names_envelope_fields(raw):
            raise _not_a_certificate(res.certificate, _why_unparseable(raw, exc)) from exc
        res.changed.append(f"the certificate file is not valid JSON any more (changed or truncated): {exc}")
        return None
    if not isinstance(envelope, dict) or not (_ENVELOPE_KEYS & envelope.keys()):
        raise _not_a_certificate(res.certificate, "it is not a DSSE envelope with payload, payloadType and signatures")
    shape_ok = True
    for name in sorted(_ENVELOPE_KEYS - envelope.keys()):
        res.changed.append(f"the envelope's {name!r} field is missing")
        shape_ok = False
    for name in sorted(envelope.keys() - _ENVELOPE_KEYS):
        res.changed.append(f"the envelope has an unexpected field {name!r}")
        shape_ok = False
    if not shape_ok:
        return None
    if envelope["payloadType"] != PAYLOAD_TYPE:
        res.changed.append(f"the envelope's payloadType changed (it must be {PAYLOAD_TYPE!r})")
    sigs = envelope["signatures"]
    if not isinstance(sigs, list) or not all(isinstance(s, dict) and set(s) == {"keyid", "sig"} for s in sigs):
        res.changed.append("the envelope's signatures list is malformed")
        envelope["signatures"] = [s for s in sigs if isinstance(s, dict)] if isinstance(sigs, list) else []
    res.keyids = tuple(str(s.get("keyid", "")) for s in envelope["signatures"])
    return envelope


class _DuplicateField(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicate_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _DuplicateField(name)
        out[name] = value
    return out


def _names_envelope_fields(raw: bytes) -> bool:
    """Whether unparseable bytes still name an envelope field: then they are a certificate that
    was cut or altered (a failed verification, exit 1), not some other file (bad input, exit 2)."""
    return any(f'"{name}"'.encode() in raw for name in _ENVELOPE_KEYS)


def _why_unparseable(raw: bytes, exc: ValueError) -> str:
    """Why bytes that name no envelope field are no certificate: empty, a PDF, not UTF-8, not JSON."""
    if not raw.strip():
        return "the file is empty"
    if raw.startswith(b"%PDF"):
        return "it is a PDF; the PDF certificate is for people, the certificate.json beside it is what verifies"
    if isinstance(exc, UnicodeDecodeError):
        return f"it is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    return f"it is not JSON ({exc})"


def _not_a_certificate(path: Path, why: str) -> CertificateError:
    """The bad-input error (exit 2) for a file that is no NeuronLens certificate at all."""
    return CertificateError(
        f"{path} is not a NeuronLens certificate: {why}.",
        "Pass the certificate.json written by `neuronlens audit --certificate json` or export_certificate().",
    )
