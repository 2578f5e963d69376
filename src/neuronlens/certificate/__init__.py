"""Alignment certificates: a signed, machine-checkable statement of what an audit found.

A certificate is an in-toto Statement v1 (subjects: the fine-tuned model's files and their
sha256; predicate: the certificate body) in a DSSE envelope signed with Ed25519, plus a PDF that
renders it for people. See docs/CERTIFICATE.md.

    paths = export_certificate(report, formats=["json", "pdf"], out_dir="out", signing_key="me.key")
    result = verify_certificate("out/certificate.json", models=["./my-finetune"], public_key="me.pub")
    assert result.ok, result.summary()
"""

from ._body import canonical_json
from ._dsse import pae
from ._errors import CertificateError, SchemaVersionError, SigningKeyError
from ._export import FILE_NAMES, FORMATS, Certificate, build_certificate, certificate_files, check_certificate_options, export_certificate
from ._keys import KeyPair, key_id, load_private_key, load_public_key, write_keypair
from ._schema import PAYLOAD_TYPE, PREDICATE_TYPE, SCHEMA_VERSION, STATEMENT_TYPE, load_schema, schema_problems
from ._verify import VerificationResult, verify_certificate

__all__ = [
    "FILE_NAMES",
    "FORMATS",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "SCHEMA_VERSION",
    "STATEMENT_TYPE",
    "Certificate",
    "CertificateError",
    "KeyPair",
    "SchemaVersionError",
    "SigningKeyError",
    "VerificationResult",
    "build_certificate",
    "canonical_json",
    "certificate_files",
    "check_certificate_options",
    "export_certificate",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_schema",
    "pae",
    "schema_problems",
    "verify_certificate",
    "write_keypair",
]
