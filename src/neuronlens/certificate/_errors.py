"""Errors of the certificate stage: each names the problem and the fix (the CLI exits 2)."""

from __future__ import annotations

from ..errors import NeuronLensError


class CertificateError(NeuronLensError):
    """A certificate cannot be made from this input, or a file is not a NeuronLens certificate."""


class SigningKeyError(CertificateError):
    """A signing or public key is missing, unreadable, or not an Ed25519 key."""


class SchemaVersionError(CertificateError):
    """The certificate was written with a newer schema than this NeuronLens understands."""
