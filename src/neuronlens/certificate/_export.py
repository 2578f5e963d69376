"""Make the certificate of an audit report and write it (JSON envelope and/or PDF).

Everything is checked and rendered in memory first (formats, risk results, key, output folder),
then the files are staged and published together, so bad input or a full disk never leaves a
half-written certificate, nor a new JSON beside an old PDF.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import check_output_targets, ensure_writable_dir, os_reason, publish_dir, write_bytes_atomic
from ..errors import OutputError
from ._body import build_body, canonical_json, require_certifiable
from ._dsse import envelope_file_bytes, make_envelope, make_statement
from ._errors import CertificateError
from ._schema import schema_problems

if TYPE_CHECKING:
    from ..report import AuditReport

FORMATS = ("json", "pdf")
FILE_NAMES = {"json": "certificate.json", "pdf": "certificate.pdf"}


@dataclass(frozen=True)
class Certificate:
    """A certificate in memory: the body, the in-toto statement, and the DSSE envelope."""

    body: dict[str, Any]
    statement: dict[str, Any]
    envelope: dict[str, Any]
    keyid: str | None
    """Key id of the signing key; None for an unsigned certificate."""

    @property
    def payload_sha256(self) -> str:
        """sha256 of the signed payload bytes (printed on the PDF to tie it to the JSON)."""
        return hashlib.sha256(canonical_json(self.statement)).hexdigest()

    def json_bytes(self) -> bytes:
        return envelope_file_bytes(self.envelope)


def build_certificate(
    report: AuditReport, *, signing_key: str | Path | None = None, created_at: str | None = None
) -> Certificate:
    """The certificate of `report`, signed with the Ed25519 PEM key at `signing_key` if given."""
    from ._keys import key_id, load_private_key

    require_certifiable(report)
    key = load_private_key(signing_key) if signing_key is not None else None
    body = build_body(report, created_at=created_at)
    statement = make_statement(body)
    problems = schema_problems(statement)
    if problems:  # never sign or write a certificate a verifier would reject
        raise CertificateError(
            "The certificate would not match its published schema: " + "; ".join(problems[:3]),
            "Report this as a NeuronLens bug, with the report JSON.",
        )
    envelope = make_envelope(statement, key)
    return Certificate(body, statement, envelope, None if key is None else key_id(key.public_key()))


def export_certificate(
    report: AuditReport,
    formats: Sequence[str] = ("pdf", "json"),
    out_dir: str | Path = ".",
    signing_key: str | Path | None = None,
    *,
    created_at: str | None = None,
    remove_stale: bool = True,
) -> dict[str, Path]:
    """Write ``certificate.json`` (DSSE envelope of an in-toto Statement v1, Ed25519-signed when
    `signing_key` is given) and/or ``certificate.pdf`` into `out_dir`; returns {format: path}.

    Every file is rendered before any is written, and none is written when one could not be. A
    certificate file of the format not written this time is removed (with a warning, unless
    `remove_stale` is False): it certified an earlier report."""
    fmts = _check_formats(formats)
    cert = build_certificate(report, signing_key=signing_key, created_at=created_at)
    folder = ensure_writable_dir(out_dir)
    check_output_targets(folder, [FILE_NAMES[f] for f in fmts])
    blobs = _render(report, cert, fmts)
    try:
        with publish_dir(folder, merge=True, stale=list(FILE_NAMES.values()) if remove_stale else ()) as staged:
            for name, data in blobs.items():
                write_bytes_atomic(staged.path / name, data)
    except OSError as exc:
        raise OutputError(f"Could not write the certificate into {folder}: {os_reason(exc)}. Nothing there was changed.",
                          "Check the folder's space and permissions, or choose another output folder.") from exc
    for path in staged.removed:
        warnings.warn(f"Removed {path}: it certified an earlier audit, not this one.", stacklevel=2)
    return {fmt: folder / FILE_NAMES[fmt] for fmt in fmts}


def certificate_files(
    report: AuditReport, formats: Sequence[str] | str, signing_key: str | Path | None = None, *, created_at: str | None = None
) -> dict[str, bytes]:
    """The certificate's files in memory, {file name: bytes}, in the order of `formats` (the bytes
    :func:`export_certificate` writes), for a caller that publishes them with other files."""
    fmts = _check_formats(formats)
    return _render(report, build_certificate(report, signing_key=signing_key, created_at=created_at), fmts)


def _render(report: AuditReport, cert: Certificate, fmts: list[str]) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    for fmt in fmts:
        if fmt == "json":
            blobs[FILE_NAMES[fmt]] = cert.json_bytes()
        else:
            from ._pdf import render_pdf

            blobs[FILE_NAMES[fmt]] = render_pdf(report, cert.body, payload_sha256=cert.payload_sha256, keyid=cert.keyid)
    return blobs


def check_certificate_options(formats: Sequence[str] | str, signing_key: str | Path | None = None) -> list[str]:
    """Check the formats and load the signing key now, so a CLI can refuse bad options before an
    audit's long work starts; returns the normalised formats."""
    from ._keys import load_private_key

    fmts = _check_formats(formats)
    if signing_key is not None:
        load_private_key(signing_key)
    return fmts


def _check_formats(formats: Sequence[str] | str) -> list[str]:
    items = [formats] if isinstance(formats, str) else list(formats)
    fmts = [f.strip().lower().lstrip(".") for item in items for f in str(item).split(",") if f.strip()]
    unknown = [f for f in fmts if f not in FORMATS]
    if unknown or not fmts:
        paths = [f for f in unknown if "/" in f or os.sep in f]  # export_certificate(report, "out/"): the folder went to formats
        where = f" {paths[0]!r} looks like a folder: that is out_dir= (--out on the CLI), not a format." if paths else ""
        raise CertificateError(
            f"Unknown certificate format(s) {unknown}." if unknown else "No certificate format was asked for.",
            f"Choose from {', '.join(FORMATS)} (e.g. --certificate json,pdf).{where}",
        )
    return list(dict.fromkeys(fmts))
