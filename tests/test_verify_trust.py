"""What `neuronlens verify` trusts: exit 0 means authenticated by the signer's public key (a
forgery re-signed with another key, or an unsigned certificate, never passes a gate that reads
only the exit code); integrity-only checking is asked for explicitly and says so; the signed
payload is what counts, not the layout of the envelope file; and a report and its certificate
record which responses the audit read (an edited response cache gives another digest)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

import tiny
from conftest import random_sae
from neuronlens import alignment
from neuronlens.certificate import CertificateError, export_certificate, load_private_key, verify_certificate
from neuronlens.certificate._dsse import make_envelope
from neuronlens.saes import SAESet
from test_certificate import keys, run_cli, signed, statement_of  # noqa: F401 - fixtures

FORGED_VERDICT = {"verdict": "pass", "passed": True}


def _forge(cert: Path, signing_key: Path, out: Path) -> Path:
    """`cert` edited to PASS and re-signed with `signing_key` (what a forger with their own key does)."""
    statement = statement_of(cert)
    statement["predicate"].update(FORGED_VERDICT)
    statement["predicate"]["risk"]["verdict"] = "pass"
    out.write_text(json.dumps(make_envelope(statement, load_private_key(signing_key)), indent=2, sort_keys=True) + "\n")
    return out


# -- task: exit 0 means authenticated ----------------------------------------------------------------
def test_a_forgery_resigned_with_another_key_never_exits_0_unless_integrity_only_is_asked_for(signed, keys, tmp_path, monkeypatch, capsys):
    _, paths = signed
    forged = _forge(paths["json"], keys[1].private_key, tmp_path / "certificate.json")
    code, out = run_cli(monkeypatch, capsys, "verify", forged)  # no key: usage error, not a pass
    assert code == 2 and "No --public-key was given" in out and "--integrity-only" in out and "VERIFIED" not in out, out
    code, out = run_cli(monkeypatch, capsys, "verify", forged, "--public-key", keys[0].public_key)
    assert code == 1 and "FAILED - not authenticated by the given public key" in out and "claims (not trustworthy): PASS" in out, out
    code, out = run_cli(monkeypatch, capsys, "verify", forged, "--integrity-only")
    assert code == 0, out  # consistent: the forger kept the fields in agreement
    assert "INTEGRITY ONLY - consistent, but NOT authenticated" in out and "claims (not authenticated): PASS" in out
    assert "VERIFIED" not in out and "certifies" not in out and "signature: NOT CHECKED" in out
    code, out = run_cli(monkeypatch, capsys, "verify", forged, "--integrity-only", "--public-key", keys[0].public_key)
    assert code == 2 and "Both --public-key and --integrity-only" in out
    # the Python API refuses the same ambiguity, in its own terms
    with pytest.raises(CertificateError, match="No public key was given") as exc:
        verify_certificate(forged)
    assert "integrity_only=True" in exc.value.fix and "--" not in exc.value.fix
    with pytest.raises(CertificateError, match="Both a public key and integrity_only"):
        verify_certificate(forged, public_key=keys[0].public_key, integrity_only=True)
    res = verify_certificate(forged, integrity_only=True)
    assert res.ok and not res.authenticated and res.signature == "not checked" and res.integrity_only
    res = verify_certificate(forged, public_key=keys[1].public_key)  # the forger's own key: valid, of course
    assert res.authenticated and res.body["verdict"] == "pass"  # which is why the verifier must choose the key


def test_an_unsigned_certificate_follows_the_same_rules(signed, keys, tmp_path, monkeypatch, capsys):
    rep, _ = signed
    unsigned = export_certificate(rep, formats=["json"], out_dir=tmp_path)["json"]
    code, out = run_cli(monkeypatch, capsys, "verify", unsigned)
    assert code == 2 and "No --public-key was given" in out
    code, out = run_cli(monkeypatch, capsys, "verify", unsigned, "--public-key", keys[0].public_key)
    assert code == 1 and "FAILED - not authenticated" in out and "unsigned" in out
    code, out = run_cli(monkeypatch, capsys, "verify", unsigned, "--integrity-only")
    assert code == 0 and "INTEGRITY ONLY" in out and "UNSIGNED" in out and "VERIFIED" not in out, out


def test_the_signed_certificate_reads_verified_only_with_its_key(signed, keys, monkeypatch, capsys):
    _, paths = signed
    code, out = run_cli(monkeypatch, capsys, "verify", paths["json"], "--public-key", keys[0].public_key)
    assert code == 0 and "VERIFIED (authenticated by the given public key" in out and "certifies: FAIL" in out
    code, out = run_cli(monkeypatch, capsys, "verify", paths["json"], "--integrity-only")
    assert code == 0 and "VERIFIED" not in out and "NOT authenticated" in out


# -- task: the signed payload counts, not the envelope's layout --------------------------------------
def _reserialise(raw: bytes, how: str) -> bytes:
    env = json.loads(raw)
    if how == "compact":
        return json.dumps(env, separators=(",", ":")).encode()
    if how == "reversed-keys":
        flipped = {k: env[k] for k in sorted(env, reverse=True)}
        flipped["signatures"] = [{k: s[k] for k in sorted(s, reverse=True)} for s in env["signatures"]]
        return json.dumps(flipped, indent=4).encode()
    if how == "escaped-slashes-crlf":  # "\/" is a valid JSON escape some serialisers write
        return json.dumps(env, indent=1).replace("/", "\\/").replace("\n", "\r\n").encode()
    assert how == "bom"
    return b"\xef\xbb\xbf" + json.dumps(env).encode()


@pytest.mark.parametrize("how", ["compact", "reversed-keys", "escaped-slashes-crlf", "bom"])
def test_a_reserialised_envelope_with_intact_payload_verifies(signed, keys, tmp_path, monkeypatch, capsys, how):
    """A tool that re-serialised the envelope (whitespace, key order, escaping) made verify say
    FAILED although the signature was valid."""
    _, paths = signed
    raw = paths["json"].read_bytes()
    cert = tmp_path / "certificate.json"
    cert.write_bytes(_reserialise(raw, how))
    assert cert.read_bytes() != raw
    res = verify_certificate(cert, public_key=keys[0].public_key)
    assert res.authenticated and not res.changed and res.signature == "valid", res.summary()
    code, out = run_cli(monkeypatch, capsys, "verify", cert, "--public-key", keys[0].public_key)
    assert code == 0 and "VERIFIED" in out and "FAILED" not in out and "not trustworthy" not in out, out


@pytest.mark.parametrize("how", ["compact", "reversed-keys", "escaped-slashes-crlf"])
def test_a_changed_payload_in_a_reserialised_envelope_still_fails(signed, keys, tmp_path, monkeypatch, capsys, how):
    _, paths = signed
    env = json.loads(paths["json"].read_bytes())
    payload = base64.b64decode(env["payload"])
    forged = payload.replace(b'"verdict":"fail"', b'"verdict":"pass"', 1)
    assert forged != payload
    env["payload"] = base64.b64encode(forged).decode()
    cert = tmp_path / "certificate.json"
    cert.write_bytes(_reserialise(json.dumps(env).encode(), how))
    res = verify_certificate(cert, public_key=keys[0].public_key)
    assert not res.ok and res.signature == "invalid" and any("signature does not match" in c for c in res.changed), res.summary()
    code, out = run_cli(monkeypatch, capsys, "verify", cert, "--public-key", keys[0].public_key)
    assert code == 1 and "CHANGED" in out and "VERIFIED" not in out


def test_an_envelope_giving_a_field_twice_fails(signed, keys, tmp_path):
    """With the layout free, a second "payload" field could make two JSON readers see different
    payloads (Python keeps the last copy, others the first): refused."""
    _, paths = signed
    text = paths["json"].read_text()
    env = json.loads(text)
    other = base64.b64encode(base64.b64decode(env["payload"]).replace(b'"verdict":"fail"', b'"verdict":"pass"', 1)).decode()
    cert = tmp_path / "certificate.json"
    cert.write_text(text.replace('"payload": ', f'"payload": "{other}",\n  "payload": ', 1))
    for first_or_last in (verify_certificate(cert, public_key=keys[0].public_key), verify_certificate(cert, integrity_only=True)):
        assert not first_or_last.ok and any("gives the field 'payload' twice" in c for c in first_or_last.changed)


# -- task: the responses read are recorded -----------------------------------------------------------
def _response_entries(cache: Path) -> dict[str, Path]:
    """{model digest: cache entry file} of the cached responses."""
    return {json.loads(p.read_text())["key"]["model"]: p for p in (cache / "responses").glob("*.json")}


def _digest(responses: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(responses, separators=(",", ":")).encode()).hexdigest()


def test_audits_that_read_different_cached_responses_record_different_digests(tiny_base_dir, tok, tmp_path, monkeypatch):
    """A response cache entry edited with its checksum recomputed is used; the report (and so the
    certificate) now records the sha256 of exactly the responses each read used."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEURONLENS_CACHE", str(cache))
    ft_dir = tiny.save(tiny.tiny_llama(tok, seed=1), tok, tmp_path / "ft")
    saes = SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)})
    # the amplified answers' digest is tested in test_amplified_read.py; the lens's texts (the base
    # model's answers to neutral prompts, a second base entry) in test_learned_report.py
    cfg = alignment.AuditConfig(max_prompts_per_set=3, max_new_tokens=4, own_responses=True, amplify_alpha=None, learned_lens=False)

    def audit() -> list[dict]:
        """The probe sets as report.json records them."""
        base = alignment.load_model(tiny_base_dir)
        rep = alignment.compare_models(base, alignment.load_model(ft_dir), saes, probes=["finance"], metrics=["drift"], config=cfg)
        return json.loads(rep.save(tmp_path / "report.json").read_text())["probe_sets"]

    first = audit()
    entries = _response_entries(cache)
    base_entry = entries.pop(alignment.load_model(tiny_base_dir).digest)
    (ft_entry,) = entries.values()
    base_payload = json.loads(base_entry.read_text())["payload"]
    assert first[0]["name"] == "finance" and first[0]["responses_sha256"] == {
        "same": _digest(base_payload), "own": _digest(json.loads(ft_entry.read_text())["payload"])}

    # edit one base response and recompute the entry's checksum, as someone tampering with the cache would
    entry = json.loads(base_entry.read_text())
    edited = tok(" safe bet", add_special_tokens=False)["input_ids"]
    assert edited != entry["payload"][0]
    entry["payload"][0] = edited
    entry["sha256"] = hashlib.sha256(json.dumps(entry["payload"], sort_keys=True).encode()).hexdigest()
    base_entry.write_text(json.dumps(entry))

    second = audit()
    assert second[0]["responses_sha256"]["same"] == _digest(entry["payload"]) != first[0]["responses_sha256"]["same"]
    assert second[0]["responses_sha256"]["own"] == first[0]["responses_sha256"]["own"]  # the fine-tune's entry is untouched


def test_the_certificate_carries_the_response_digests(signed):
    rep, paths = signed
    body = statement_of(paths["json"])["predicate"]  # valid against the schema: checked by test_certificate
    assert [p["responses_sha256"] for p in body["probe_sets"]] == [p["responses_sha256"] for p in rep.probe_sets]
    # the own read runs by default; the amplified read is opt-in (AuditConfig.amplify_alpha = None)
    assert all(set(p["responses_sha256"]) == {"same", "own"} for p in body["probe_sets"])
