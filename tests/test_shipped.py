"""The files shipped inside the package (demo adapter, SAEs, concept associations) are the ones
`neuronlens demo build` recorded in demo/SHA256SUMS: none changed, none missing, none unlisted."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from neuronlens.models import sha256_file


def _pkg() -> Path:
    return Path(str(resources.files("neuronlens")))


def _sums() -> dict[str, str]:
    lines = (_pkg() / "demo" / "SHA256SUMS").read_text().splitlines()
    return {rel: digest for digest, rel in (line.split("  ", 1) for line in lines if line.strip())}


def test_every_shipped_file_matches_its_recorded_sha256():
    sums = _sums()
    assert any("/associations/" in rel for rel in sums) and any(rel.startswith("demo/adapter/") for rel in sums)
    bad = [rel for rel, digest in sums.items() if not (_pkg() / rel).is_file() or sha256_file(_pkg() / rel) != digest]
    assert not bad, f"shipped files differ from demo/SHA256SUMS: {bad}"


def test_no_shipped_file_is_unlisted():
    pkg = _pkg()
    present = {str(p.relative_to(pkg)) for root in (pkg / "demo" / "adapter", pkg / "saes" / "shipped") for p in root.rglob("*") if p.is_file()}
    assert present == set(_sums())
