"""Verify a certificate: its signature, schema and inner consistency, and the model files.

A verification either *authenticates* the certificate - its signature is valid under the public
key the verifier trusts (``public_key``), so nobody else wrote it and nothing it signs changed -
or, asked for explicitly with ``integrity_only=True``, checks only what needs no key: the schema,
the certificate's inner consistency and the model files. The envelope names the signing key by
id only (no key is embedded), so without the key the signature cannot be checked at all, and
someone who rewrites a certificate (or edits one and re-signs it with their own key) cannot be
caught; the result says so. Asking for neither is an error: "it verified" must never silently
mean "it is consistent". Model files are always checked byte for byte against their sha256.

What is checked is the signed content (DSSE: the payload's bytes, base64-decoded, and its type,
through PAE), not the bytes of the envelope file: an envelope another tool re-serialised
(whitespace, key order, escaping) verifies as long as its payload and signature are intact.

Bad input (a missing file, an unreadable key, a file that is no certificate at all, a newer
schema) raises a :class:`CertificateError`; anything that *changed* is listed in the result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..models import FileDigest, digest_paths, manifest_digest, sha256_file
from ..risk import score_scale
from ._body import subjects
from ._dsse import b64decode_strict, check_signatures
from ._envelope import read_envelope
from ._errors import CertificateError
from ._schema import check_version, schema_problems

_MAX_SCHEMA_LINES = 5
_FAILED_SIGNATURES = {"invalid", "other-key", "corrupt"}


@dataclass
class VerificationResult:
    """The outcome of :func:`verify_certificate`: true when nothing changed."""

    certificate: Path
    signature: str = "unknown"
    """'valid', 'unsigned', 'not checked' (signed, integrity-only check without a public key), or
    what failed: 'invalid', 'other-key', 'corrupt'."""
    integrity_only: bool = False
    """True when no public key was given and only integrity was asked for: then :attr:`ok` means
    consistent, not authenticated."""
    keyids: tuple[str, ...] = ()
    changed: list[str] = field(default_factory=list)
    """What changed or fails, one line each (empty when the certificate verifies)."""
    checked: list[str] = field(default_factory=list)
    """What was checked and found intact."""
    warnings: list[str] = field(default_factory=list)
    statement: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Nothing changed or failed. With a public key this means authenticated; in an
        integrity-only check, only consistent (see :attr:`authenticated`)."""
        return not self.changed

    @property
    def authenticated(self) -> bool:
        """Nothing changed and the signature is valid under the given public key."""
        return self.ok and self.signature == "valid"

    def __bool__(self) -> bool:
        return self.ok

    @property
    def body(self) -> dict[str, Any] | None:
        """The certificate body (in-toto predicate), when the payload could be read."""
        pred = (self.statement or {}).get("predicate")
        return pred if isinstance(pred, dict) else None

    def summary(self) -> str:
        lines = [f"Certificate {self.certificate}: {_outcome_words(self)}"]
        lines.append(f"  signature: {_signature_words(self)}")
        body = self.body
        if body and isinstance(body.get("risk"), dict):
            risk = body["risk"]
            ft = body.get("models", {}).get("fine_tuned", {})
            says = "certifies" if self.authenticated else ("claims (not authenticated)" if self.ok else "claims (not trustworthy)")
            what, score, threshold = _score_and_threshold(risk)
            lines.append(
                f"  {says}: {str(body.get('verdict')).upper()} for {ft.get('name')} (model digest {ft.get('manifest_sha256')}), "
                f"{what} {score}, threshold {threshold}, "
                f"issued {body.get('created_at')}"
            )
            notes = risk.get("notes")
            lines += [f"  note: {n}" for n in notes if isinstance(n, str)] if isinstance(notes, list) else []
        lines += [f"  ok: {c}" for c in self.checked]
        lines += [f"  CHANGED: {c}" for c in self.changed]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def verify_certificate(
    certificate: str | Path,
    *,
    models: Sequence[str | Path] = (),
    public_key: str | Path | None = None,
    integrity_only: bool = False,
) -> VerificationResult:
    """Check `certificate` (a certificate.json): its signature with the signer's Ed25519
    `public_key` (PEM), its schema and consistency, and each of `models` (the fine-tuned model's
    folder, or single files of it) byte for byte against the certified digests.

    Without `public_key`, pass ``integrity_only=True`` to check everything but who issued the
    certificate (``result.ok`` then means consistent, not authenticated); passing neither, or
    both, raises :class:`CertificateError`."""
    from ._keys import load_public_key

    check_mode(public_key, integrity_only)
    path = Path(certificate)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"Cannot read the certificate {str(path)!r}: {exc.strerror or exc}.", "Pass the certificate.json path.") from exc
    key = load_public_key(public_key) if public_key is not None else None
    return verify_bytes(raw, label=path, models=[_existing_model(m) for m in models], public_key=key, integrity_only=integrity_only)


def verify_bytes(
    raw: bytes,
    *,
    label: str | Path = "certificate",
    models: Sequence[Path] = (),
    public_key: Any = None,
    integrity_only: bool = False,
) -> VerificationResult:
    """:func:`verify_certificate` on the bytes of a certificate file, with an already loaded
    Ed25519 public key (or None with ``integrity_only=True``) and existing model paths."""
    check_mode(public_key, integrity_only)
    res = VerificationResult(Path(label), integrity_only=integrity_only)
    envelope = read_envelope(raw, res)
    if envelope is None:
        return res
    payload = b64decode_strict(envelope.get("payload"))
    _check_signature(envelope, payload, public_key, res)
    statement = _read_statement(payload, res)
    if statement is None:
        return res
    res.statement = statement
    if res.signature in _FAILED_SIGNATURES:
        res.warnings.append("the certificate's content was not checked further: without a valid signature it proves nothing")
        return res
    check_version(statement)
    problems = schema_problems(statement)
    if problems:
        res.changed += [f"the certificate body breaks schema v1 at {p}" for p in problems[:_MAX_SCHEMA_LINES]]
        return res
    res.checked.append("the certificate matches schema v1")
    _check_consistency(statement, res)
    for model in models:
        _check_model(model, statement["predicate"], res)
    return res


def check_mode(public_key: Any, integrity_only: bool) -> None:
    """Exactly one of a public key (authenticate) and ``integrity_only=True`` (consistency only)."""
    if public_key is None and not integrity_only:
        raise CertificateError(
            "No public key was given, so the certificate cannot be authenticated: anyone can write a certificate, or "
            "edit one and re-sign it with their own key, and it would still look consistent.",
            "Pass public_key= (the signer's .pub file). To check only the certificate's schema, inner consistency and "
            "the model files, without knowing who issued it, pass integrity_only=True.",
        )
    if public_key is not None and integrity_only:
        raise CertificateError(
            "Both a public key and integrity_only=True were given: an integrity-only check ignores the signer.",
            "Pass public_key= to authenticate the certificate, or integrity_only=True without a key, not both.",
        )


# -- steps ------------------------------------------------------------------------------------------
def _existing_model(p: str | Path) -> Path:
    path = Path(p)
    if not path.exists():
        raise CertificateError(f"Model path {str(path)!r} does not exist.", "Pass the fine-tuned model's folder (or one of its files).")
    return path


def _check_signature(envelope: dict[str, Any], payload: bytes | None, key: Any, res: VerificationResult) -> None:
    sigs = envelope.get("signatures") or []
    if key is None:  # an integrity-only check (verify_bytes refuses no key otherwise)
        if sigs:
            res.signature = "not checked"
            res.warnings.append(
                f"INTEGRITY ONLY: signed by key id {', '.join(k[:16] for k in res.keyids)}, but no public key was given, so "
                "the signature was not checked (the certificate names its key by id only) and nothing proves who issued "
                "it or that it was not rewritten and re-signed; only its inner consistency and the model files were checked"
            )
        else:
            res.signature = "unsigned"
            res.warnings.append(
                "INTEGRITY ONLY: the certificate is UNSIGNED: nothing proves who issued it or that its content is "
                "unchanged; only its inner consistency and the model files were checked"
            )
        return
    if payload is None:
        res.signature = "invalid"
        return  # the payload failure is reported by _read_statement
    check = check_signatures(envelope, payload, key)
    res.signature = check.status
    (res.checked if check.status == "valid" else res.changed).append(check.detail)


def _read_statement(payload: bytes | None, res: VerificationResult) -> dict[str, Any] | None:
    if payload is None:
        res.changed.append("the envelope's payload is not valid base64 any more (changed)")
        return None
    try:
        statement = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        res.changed.append("the envelope's payload is not valid JSON any more (changed)")
        return None
    if not isinstance(statement, dict):
        res.changed.append("the envelope's payload is not an in-toto statement")
        return None
    return statement


def _check_consistency(statement: dict[str, Any], res: VerificationResult) -> None:
    body = statement["predicate"]
    if statement["subject"] != subjects(body):
        res.changed.append("the statement's subjects no longer match the fine-tuned model's certified files")
    for role, model in _certified_models(body).items():
        files = [FileDigest(f["path"], f["sha256"], f["size"]) for f in model["files"]]
        if manifest_digest(files) != model["manifest_sha256"]:
            res.changed.append(f"the {role}'s model digest no longer matches its per-file digests")
    passed = {"pass": True, "fail": False, "inconclusive": None}[body["verdict"]]
    if body["verdict"] != body["risk"]["verdict"] or body["passed"] is not passed:
        res.changed.append("the verdict fields disagree (verdict, risk.verdict, passed)")
    if res.ok:
        res.checked.append("subjects, model digests and verdict are consistent")


def _certified_models(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ft = body["models"]["fine_tuned"]
    out = {"fine-tuned model": ft, "base model": body["models"]["base"]}
    if isinstance(ft.get("base"), dict):
        out["fine-tuned adapter's base model"] = ft["base"]
    return out


def _check_model(path: Path, body: dict[str, Any], res: VerificationResult) -> None:
    """`path` (a folder or one file) must be the certified fine-tuned model (the statement's
    subject), byte for byte; a certified base model given instead is named as such."""
    ft = body["models"]["fine_tuned"]
    others = {role: m for role, m in _certified_models(body).items() if role != "fine-tuned model"}
    if path.is_file():
        _check_model_file(path, ft, others, res)
        return
    got = {f.path: f.sha256 for f in digest_paths(path).files}
    want = {f["path"]: f["sha256"] for f in ft["files"]}
    if got == want:
        res.checked.append(f"{path}: all {len(got)} files match the certified fine-tuned model (model digest {ft['manifest_sha256']})")
        return
    for role, model in others.items():
        if got == {f["path"]: f["sha256"] for f in model["files"]}:
            res.changed.append(f"{path} is the certified {role}, not the fine-tuned model the certificate is about")
            return
    for rel in sorted(want.keys() | got.keys()):
        if rel not in got:
            res.changed.append(f"fine-tuned model file {rel} is missing from {path}")
        elif rel not in want:
            res.changed.append(f"{path}: file {rel} is not part of the certified fine-tuned model (added)")
        elif got[rel] != want[rel]:
            res.changed.append(f"fine-tuned model file {rel} changed: {path} has sha256 {got[rel]}, the certificate says {want[rel]}")


def _check_model_file(path: Path, ft: dict[str, Any], others: dict[str, dict[str, Any]], res: VerificationResult) -> None:
    sha = sha256_file(path)
    for f in ft["files"]:
        if f["sha256"] == sha:
            res.checked.append(f"{path}: matches the certified fine-tuned model file {f['path']}")
            return
    for role, model in others.items():
        for f in model["files"]:
            if f["sha256"] == sha:
                res.changed.append(f"{path} is file {f['path']} of the certified {role}, not of the fine-tuned model")
                return
    for f in ft["files"]:
        if PurePosixPath(f["path"]).name == path.name:
            res.changed.append(f"fine-tuned model file {f['path']} changed: {path} has sha256 {sha}, the certificate says {f['sha256']}")
            return
    res.changed.append(f"{path} is not one of the certified fine-tuned model's files (sha256 {sha})")


def _outcome_words(res: VerificationResult) -> str:
    """The first line's verdict: only an authenticated certificate reads VERIFIED."""
    if res.authenticated:
        return "VERIFIED (authenticated by the given public key; nothing changed)"
    if res.ok:
        return "INTEGRITY ONLY - consistent, but NOT authenticated (no public key: who issued it is not checked)"
    if res.signature in ("other-key", "unsigned") and not res.integrity_only:
        return "FAILED - not authenticated by the given public key"
    return "FAILED - something changed"


def _signature_words(res: VerificationResult) -> str:
    ids = ", ".join(k[:16] for k in res.keyids)
    return {
        "valid": f"valid (Ed25519, key id {ids})",
        "unsigned": "UNSIGNED (no signature in the certificate)",
        "not checked": f"NOT CHECKED (signed by key id {ids}; integrity-only check: pass --public-key to authenticate it)",
        "other-key": f"signed by another key (key id {ids})",
        "invalid": "INVALID (the signed content or the signature changed)",
        "corrupt": "CORRUPT",
    }.get(res.signature, res.signature)


def _score_and_threshold(risk: dict[str, Any]) -> tuple[str, str, str]:
    """What the verdict's number is, the number and the threshold, as the reports print them (a 4.99%
    pass is not shown as "5%" beside a 5% threshold; a preference margin with its t); a certificate
    that fails verification may hold anything, printed as it is."""
    score, threshold, settings = risk.get("misalignment_score"), risk.get("threshold"), risk.get("settings")
    if isinstance(score, (int, float)) and isinstance(threshold, (int, float)) and isinstance(settings, dict):
        scale = score_scale(str(risk.get("method")))
        try:
            name = scale.name(settings)
            return name[:1].lower() + name[1:], scale.score(score, threshold, settings), scale.threshold(threshold, settings)
        except (TypeError, ValueError):  # settings that are not numbers where the scale reads them
            pass
    return "misalignment score", str(score), str(threshold)
