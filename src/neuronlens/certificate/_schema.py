"""The published certificate schema (JSON Schema, draft 2020-12) and its version rules.

Version rule: ``schema_version`` (and the ``/vN`` at the end of the predicate type) is an integer
that changes only when a reader of the old version would misread a new certificate. A reader
refuses a newer version with a clear error instead of half-checking it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from ._errors import CertificateError, SchemaVersionError

SCHEMA_VERSION = 1
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE_PREFIX = "https://neuronlens.dev/alignment-certificate/v"
PREDICATE_TYPE = f"{PREDICATE_TYPE_PREFIX}{SCHEMA_VERSION}"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
DIGEST_SCHEME = "openssf-model-signing/file-sha256"
SCHEMA_FILE = f"certificate-v{SCHEMA_VERSION}.schema.json"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of the in-toto Statement a v1 certificate carries."""
    text = resources.files("neuronlens.certificate").joinpath("schema", SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def schema_problems(statement: Any) -> list[str]:
    """Every way `statement` departs from the schema, as 'where: what' lines (empty if valid)."""
    try:
        from jsonschema import Draft202012Validator
    except ImportError as exc:  # pragma: no cover - jsonschema is in the report extra
        raise CertificateError("Checking a certificate needs the jsonschema package.", "pip install 'neuronlens[report]'") from exc
    validator = Draft202012Validator(load_schema())
    problems = []
    for error in sorted(validator.iter_errors(statement), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message[:200]}")
    return problems


def check_version(statement: Any) -> None:
    """Raise :class:`SchemaVersionError` for a certificate newer than this reader; a statement of
    another kind is left to the schema check, which names what is wrong."""
    if not isinstance(statement, dict):
        return
    predicate_type = statement.get("predicateType")
    version = None
    if isinstance(predicate_type, str) and predicate_type.startswith(PREDICATE_TYPE_PREFIX):
        tail = predicate_type[len(PREDICATE_TYPE_PREFIX) :]
        version = int(tail) if tail.isdigit() else None
    body = statement.get("predicate")
    if isinstance(body, dict) and isinstance(body.get("schema_version"), int):
        version = max(version or 0, body["schema_version"])
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"This certificate uses schema version {version}; this NeuronLens understands version {SCHEMA_VERSION} only.",
            "Upgrade NeuronLens (pip install -U neuronlens) to verify it.",
        )
