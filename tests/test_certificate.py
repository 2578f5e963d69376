"""Certificates: the JSON (in-toto Statement v1 in a signed DSSE envelope, valid against the
published schema), the PDF (text and pages checked with poppler), determinism, `neuronlens
verify` catching every changed byte of the signed certificate and of model files, clear errors for bad
input, and our model digest equal to OpenSSF model signing's own."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiny
from neuronlens import alignment, cli
from neuronlens.certificate import (
    PAYLOAD_TYPE, CertificateError, SchemaVersionError, SigningKeyError, canonical_json, check_certificate_options,
    export_certificate, pae, verify_certificate, write_keypair,
)
from neuronlens.certificate._dsse import envelope_file_bytes, make_envelope
from neuronlens.errors import OutputError
from neuronlens.models._digest import digest_paths
from test_heatmap import LAYER, distinct_colours, fresh_report, model_dirs, with_risk

SCHEMA_FILE = Path(__file__).parents[1] / "src" / "neuronlens" / "certificate" / "schema" / "certificate-v1.schema.json"
POPPLER = shutil.which("pdftotext") is not None and shutil.which("pdftoppm") is not None
T0, T1 = "2026-01-02T03:04:05Z", "2027-06-07T08:09:10Z"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return write_keypair(folder / "signer"), write_keypair(folder / "other")


@pytest.fixture()
def report(tmp_path_factory, tok):
    return with_risk(fresh_report(tmp_path_factory, tok))


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tok, keys):
    """A signed JSON+PDF certificate of the shared audit."""
    rep = with_risk(fresh_report(tmp_path_factory, tok))
    paths = export_certificate(rep, formats=["json", "pdf"], out_dir=tmp_path_factory.mktemp("cert"), signing_key=keys[0].private_key)
    return rep, paths


def statement_of(path: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["neuronlens", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), " ".join((captured.out + captured.err).split())


# -- what a certificate holds ----------------------------------------------------------------------
def test_json_is_a_signed_in_toto_statement_valid_against_the_published_schema(signed, keys):
    import jsonschema
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    rep, paths = signed
    assert set(paths) == {"json", "pdf"} and paths["json"].name == "certificate.json"
    envelope = json.loads(paths["json"].read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and len(envelope["signatures"]) == 1
    payload = base64.b64decode(envelope["payload"])
    statement = json.loads(payload)
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(statement)
    # the signature is a plain Ed25519 signature over DSSE's PAE, checkable without NeuronLens
    public = load_pem_public_key(keys[0].public_key.read_bytes())
    public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae(PAYLOAD_TYPE, payload))
    assert envelope["signatures"][0]["keyid"] == keys[0].keyid
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://neuronlens.dev/alignment-certificate/v1"
    _, ft_dir = model_dirs()
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ft_dir.iterdir()}
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == on_disk
    body = statement["predicate"]
    assert body["schema_version"] == 1 and body["neuronlens_version"] and body["created_at"].endswith("Z")
    assert body["models"]["fine_tuned"]["manifest_sha256"] == rep.ft["manifest_sha256"] == digest_paths(ft_dir).digest
    assert body["models"]["base"]["manifest_sha256"] == rep.base["manifest_sha256"]
    assert [s["sha256"] for s in body["saes"]] == [s["sha256"] for s in rep.saes]
    assert [p["sha256"] for p in body["probe_sets"]] == [p["sha256"] for p in rep.probe_sets]
    assert body["config"] == rep.config.to_dict() and [ld["drift"] for ld in body["drift"]["layers"]] == [ld.drift for ld in rep.layers]
    assert body["risk"]["misalignment_score"] == 0.62 and body["risk"]["threshold"] == 0.5
    assert body["risk"]["score_interval"] == rep.risk.score_interval == [0.55, 0.7]
    # what the audit could not see travels with the verdict: a pass must not hide an unscored concept
    assert body["risk"]["notes"] == rep.risk.notes and "insecure_code" in body["risk"]["notes"][0]
    assert body["verdict"] == "fail" and body["passed"] is False
    feat = body["risky_features"][0]
    want = rep.risk.risky_features[0]
    assert (feat["id"], feat["layer"], feat["label"], feat["label_source"], feat["concept"], feat["drift_ratio"]) == (
        want.latent, want.layer, want.label, want.label_source, want.concept, want.drift_ratio)
    assert "evidence" not in feat and "timings" not in json.dumps(body)


def test_pae_matches_the_dsse_spec_example():
    assert pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_same_inputs_same_body_and_only_created_at_differs(report, keys, tmp_path):
    a = export_certificate(report, formats=["json"], out_dir=tmp_path / "a", signing_key=keys[0].private_key, created_at=T0)["json"]
    b = export_certificate(report, formats=["json"], out_dir=tmp_path / "b", signing_key=keys[0].private_key, created_at=T0)["json"]
    c = export_certificate(report, formats="json", out_dir=tmp_path / "c", created_at=T1)["json"]
    assert a.read_bytes() == b.read_bytes()  # Ed25519 is deterministic too
    body_a, body_c = statement_of(a)["predicate"], statement_of(c)["predicate"]
    assert body_a["created_at"] == T0 and body_c["created_at"] == T1
    assert {k: v for k, v in body_a.items() if k != "created_at"} == {k: v for k, v in body_c.items() if k != "created_at"}
    assert base64.b64decode(json.loads(a.read_text())["payload"]) == canonical_json(statement_of(a))
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["certificate.json"]  # atomic: no temp files left


@pytest.mark.skipif(not POPPLER, reason="poppler-utils (pdftotext, pdftoppm) not installed")
def test_pdf_states_verdict_identity_and_every_hash(signed, tmp_path):
    rep, paths = signed
    pdf = paths["pdf"]
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    first = text.split("\f")[0]
    assert "FAIL" in first and "Misalignment score 62% (threshold 50%; 95% interval over probe samples 55.0% to 70.0%)" in " ".join(first.split())
    assert rep.ft["manifest_sha256"] in first and str(rep.ft["name"]) in first
    statement = statement_of(paths["json"])
    assert hashlib.sha256(canonical_json(statement)).hexdigest() in first  # ties the paper to the JSON
    assert "Notes: limits of this audit" in first and "audited layers): insecure_code." in " ".join(first.split())
    flat = "".join(text.split())
    for digest in [rep.base["manifest_sha256"], *(f["sha256"] for f in rep.ft["files"]), *(f["sha256"] for f in rep.base["files"]),
                   *(s["sha256"] for s in rep.saes), *(p["sha256"] for p in rep.probe_sets)]:
        assert digest in flat
    for words in ("Layer-wise drift", "Risky features (2)", "Model and checkpoint hashes", "Method", "How to verify", "neuronlens verify"):
        assert words in text
    assert "refusal \u2192 warning" in text  # non-Latin-1 labels survive (embedded DejaVu)
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=60)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 2 and all(distinct_colours(p) > 20 for p in pages)


# -- verification ----------------------------------------------------------------------------------
def test_verify_accepts_the_untouched_certificate_and_model(signed, keys, monkeypatch, capsys):
    _, paths = signed
    _, ft_dir = model_dirs()
    res = verify_certificate(paths["json"], models=[ft_dir, ft_dir / "model.safetensors"], public_key=keys[0].public_key)
    assert res.ok and res.signature == "valid" and res.body["verdict"] == "fail", res.summary()
    code, out = run_cli(monkeypatch, capsys, "verify", paths["json"], "--model", ft_dir, "--public-key", keys[0].public_key)
    assert code == 0 and "VERIFIED" in out and "signature: valid" in out
    assert "misalignment score 62%, threshold 50%" in out  # printed as the reports print them


def test_every_changed_byte_of_the_certificate_fails(signed, keys):
    """Flip each byte of the signed certificate in turn: verification must fail every time."""
    _, paths = signed
    from neuronlens.certificate import load_public_key
    from neuronlens.certificate._verify import verify_bytes

    raw = paths["json"].read_bytes()
    key = load_public_key(keys[0].public_key)
    assert verify_bytes(raw, public_key=key).ok
    missed = []
    for i in range(len(raw)):
        tampered = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        try:
            res = verify_bytes(tampered, public_key=key)
        except CertificateError:
            continue  # e.g. a renamed envelope field: "not a certificate" (exit 2) also fails
        if res.ok or not res.changed:
            missed.append(i)
    assert not missed, f"{len(missed)} changed byte(s) went unnoticed, e.g. at {missed[:5]}"


@pytest.mark.parametrize(
    "where,expect",
    [("payload", "signature does not match"), ("sig", "signature is corrupt|signature does not match"),
     ("keyid", "not by the given public key")],
)
def test_tampered_certificate_names_what_changed(signed, keys, tmp_path, monkeypatch, capsys, where, expect):
    _, paths = signed
    text = paths["json"].read_text()
    env = json.loads(text)
    if where == "payload":  # change one character of the statement, re-encode: valid base64, valid JSON
        stmt = base64.b64decode(env["payload"]).replace(b'"verdict":"fail"', b'"verdict":"pass"', 1)
        env["payload"] = base64.b64encode(stmt).decode()
        text = envelope_file_bytes(env).decode()
    elif where == "sig":
        sig = env["signatures"][0]["sig"]
        env["signatures"][0]["sig"] = ("B" if sig[0] != "B" else "C") + sig[1:]
        text = envelope_file_bytes(env).decode()
    else:
        env["signatures"][0]["keyid"] = "0" * 64
        text = envelope_file_bytes(env).decode()
    cert = tmp_path / "certificate.json"
    cert.write_text(text)
    res = verify_certificate(cert, public_key=keys[0].public_key)
    assert not res.ok and any(re.search(expect, c) for c in res.changed), res.summary()
    code, out = run_cli(monkeypatch, capsys, "verify", cert, "--public-key", keys[0].public_key)
    assert code == 1 and "CHANGED" in out


@pytest.mark.parametrize("change", ["flip", "add", "remove"])
def test_changed_model_files_are_named(signed, keys, tmp_path, monkeypatch, capsys, change):
    _, paths = signed
    _, ft_dir = model_dirs()
    model = shutil.copytree(ft_dir, tmp_path / "model")
    if change == "flip":
        data = bytearray((model / "model.safetensors").read_bytes())
        data[len(data) // 2] ^= 0x01
        (model / "model.safetensors").write_bytes(bytes(data))
        expect = "fine-tuned model file model.safetensors changed"
    elif change == "add":
        (model / "extra.bin").write_bytes(b"\0")
        expect = "extra.bin is not part of the certified fine-tuned model"
    else:
        (model / "config.json").unlink()
        expect = "fine-tuned model file config.json is missing"
    res = verify_certificate(paths["json"], models=[model], public_key=keys[0].public_key)
    assert res.signature == "valid" and not res.ok and any(expect in c for c in res.changed), res.summary()
    code, out = run_cli(monkeypatch, capsys, "verify", paths["json"], "--model", model, "--integrity-only")
    assert code == 1 and expect in out
    if change == "flip":
        single = verify_certificate(paths["json"], models=[model / "model.safetensors"], integrity_only=True)
        assert any(expect in c for c in single.changed)


def test_base_model_is_not_accepted_as_the_fine_tuned_one(signed):
    _, paths = signed
    base_dir, _ = model_dirs()
    res = verify_certificate(paths["json"], models=[base_dir], integrity_only=True)
    assert not res.ok and "is the certified base model, not the fine-tuned model" in res.changed[0]


def test_wrong_key_unsigned_and_corrupt_keys(signed, keys, report, tmp_path, monkeypatch, capsys):
    _, paths = signed
    res = verify_certificate(paths["json"], public_key=keys[1].public_key)
    assert not res.ok and res.signature == "other-key"
    code, out = run_cli(monkeypatch, capsys, "verify", paths["json"], "--public-key", keys[1].public_key)
    assert code == 1 and "not by the given public key" in out
    unsigned = export_certificate(report, formats=["json"], out_dir=tmp_path / "u")["json"]
    res = verify_certificate(unsigned, integrity_only=True)
    assert res.ok and not res.authenticated and res.signature == "unsigned" and "UNSIGNED" in res.summary()
    assert report.risk.notes and all(f"  note: {n}" in res.summary().splitlines() for n in report.risk.notes)  # limits are read out too
    assert json.loads(unsigned.read_text())["signatures"] == []
    res = verify_certificate(unsigned, public_key=keys[0].public_key)
    assert not res.ok and "unsigned" in res.changed[0]
    corrupt = tmp_path / "corrupt.pub"
    corrupt.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    code, out = run_cli(monkeypatch, capsys, "verify", paths["json"], "--public-key", corrupt)
    assert code == 2 and "corrupt" in out and "How to fix" in out
    with pytest.raises(SigningKeyError, match="public key; signing needs the private half"):
        export_certificate(report, out_dir=tmp_path / "k1", signing_key=keys[0].public_key)
    with pytest.raises(SigningKeyError, match="corrupt"):
        export_certificate(report, out_dir=tmp_path / "k2", signing_key=_write(tmp_path / "junk.key", "junk"))
    rsa_key = tmp_path / "rsa.key"
    _write_rsa_key(rsa_key)
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        export_certificate(report, out_dir=tmp_path / "k3", signing_key=rsa_key)
    assert not any((tmp_path / d).exists() for d in ("k1", "k2", "k3"))  # nothing written


def _write_rsa_key(path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


def test_newer_schema_is_refused_clearly(signed, keys, tmp_path, monkeypatch, capsys):
    from neuronlens.certificate import load_private_key

    _, paths = signed
    statement = statement_of(paths["json"])
    statement["predicateType"] = "https://neuronlens.dev/alignment-certificate/v2"
    statement["predicate"]["schema_version"] = 2
    cert = tmp_path / "v2.json"
    cert.write_bytes(envelope_file_bytes(make_envelope(statement, load_private_key(keys[0].private_key))))
    with pytest.raises(SchemaVersionError, match="schema version 2"):
        verify_certificate(cert, public_key=keys[0].public_key)
    code, out = run_cli(monkeypatch, capsys, "verify", cert, "--public-key", keys[0].public_key)
    assert code == 2 and "Upgrade NeuronLens" in out


def test_bad_inputs_raise_clear_errors_and_write_nothing(tmp_path_factory, tok, tmp_path, monkeypatch, capsys):
    no_risk = fresh_report(tmp_path_factory, tok)
    with pytest.raises(CertificateError, match="no risk assessment") as exc:
        export_certificate(no_risk, out_dir=tmp_path / "a")
    assert "misalignment score, threshold, verdict" in exc.value.problem and exc.value.fix
    risky = with_risk(fresh_report(tmp_path_factory, tok))
    with pytest.raises(CertificateError, match="Unknown certificate format"):
        export_certificate(risky, formats=["json", "docx"], out_dir=tmp_path / "b")
    with pytest.raises(CertificateError, match="Unknown certificate format"):
        check_certificate_options("json,html")
    assert check_certificate_options("pdf, json,pdf") == ["pdf", "json"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot be written"):
        export_certificate(risky, out_dir=blocker / "out")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(CertificateError, match="not a NeuronLens certificate"):
        verify_certificate(_write(tmp_path / "r.json", '{"format": "neuronlens.report/1"}'), integrity_only=True)
    code, out = run_cli(monkeypatch, capsys, "verify", tmp_path / "missing.json", "--integrity-only")
    assert code == 2 and "Cannot read the certificate" in out
    code, out = run_cli(monkeypatch, capsys, "verify", _write(tmp_path / "cut.json", '{"payload": "ab'), "--integrity-only")
    assert code == 1 and "not valid JSON" in out


@pytest.mark.parametrize(
    "content,why",
    [(b"", "the file is empty"), (b"  \n", "the file is empty"), (b"\xff\xfe{}", "not UTF-8 text (byte 0xff at offset 0)"),
     (b"hello, world", "not JSON (Expecting value at line 1, column 1)"), (b"%PDF-1.7\n\xe2\xe3", "it is a PDF"),
     (b'{"a": 1}', "not a DSSE envelope")],
)
def test_verify_a_file_that_is_no_certificate_exits_2(tmp_path, monkeypatch, capsys, content, why):
    """Empty, non-UTF-8 or non-JSON files are bad input (exit 2, with a fix), not a changed certificate
    (exit 1); a cut certificate that still names envelope fields stays a failed verification."""
    cert = tmp_path / "c.json"
    cert.write_bytes(content)
    code, out = run_cli(monkeypatch, capsys, "verify", cert, "--integrity-only")
    assert code == 2 and "not a NeuronLens certificate" in out and why in out and "How to fix" in out, out
    assert "FAILED" not in out and "Traceback" not in out
    cert.write_bytes(b'{\n  "payload": "ab\xff')
    code, out = run_cli(monkeypatch, capsys, "verify", cert, "--integrity-only")
    assert code == 1 and "FAILED - something changed" in out and "not valid JSON" in out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_keygen_cli(tmp_path, monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, "keygen", "--out", tmp_path / "me")
    assert code == 0 and (tmp_path / "me.key").stat().st_mode & 0o777 == 0o600 and (tmp_path / "me.pub").is_file()
    code, out = run_cli(monkeypatch, capsys, "keygen", "--out", tmp_path / "me")
    assert code == 2 and "--force" in out


@pytest.mark.parametrize("out", ["existing", "existing/", "new/"])
def test_keygen_into_a_folder_writes_inside_it(tmp_path, monkeypatch, capsys, out):
    """`--out keys/` (an existing folder, or a trailing slash) wrote keys.key and keys.pub beside it."""
    (tmp_path / "existing").mkdir()
    folder = tmp_path / out.rstrip("/")
    code, text = run_cli(monkeypatch, capsys, "keygen", "--out", f"{tmp_path}/{out}")
    assert code == 0 and f"{folder}/neuronlens-signing.key" in text
    assert (folder / "neuronlens-signing.key").stat().st_mode & 0o777 == 0o600 and (folder / "neuronlens-signing.pub").is_file()
    assert not list(tmp_path.glob("*.key")) and not list(tmp_path.glob("*.pub"))


def test_verify_refuses_a_private_key_as_the_public_key(signed, keys, monkeypatch, capsys):
    """A private key passed as --public-key verified silently ("signature: valid")."""
    _, paths = signed
    with pytest.raises(SigningKeyError, match="is a PRIVATE key") as exc:
        verify_certificate(paths["json"], public_key=keys[0].private_key)
    assert str(keys[0].public_key) in exc.value.fix
    code, out = run_cli(monkeypatch, capsys, "verify", paths["json"], "--public-key", keys[0].private_key)
    assert code == 2 and "PRIVATE key" in out and "Pass the .pub file" in out and "signature: valid" not in out


def test_audit_cli_writes_html_and_signed_certificates(signed, keys, tmp_path, monkeypatch, capsys):
    """`neuronlens audit --html --certificate json,pdf --signing-key` end to end (the comparison
    itself is replaced by the shared report, to keep this test about the wiring)."""
    from conftest import random_sae
    from neuronlens.saes import save_saelens

    rep, _ = signed
    base_dir, ft_dir = model_dirs()
    for layer in (1, 3):
        save_saelens(random_sae(64, 128, layer, seed=layer), tmp_path / "saes" / f"layer_{layer}")
    monkeypatch.setattr(alignment, "compare_models", lambda **kw: rep)
    out_dir = tmp_path / "out"
    code, out = run_cli(monkeypatch, capsys, "audit", "--base", base_dir, "--ft", ft_dir, "--sae", tmp_path / "saes",
                        "--layers", "1,3", "--out", out_dir, "--no-progress", "--html",
                        "--certificate", "json,pdf", "--signing-key", keys[0].private_key)
    assert code == 1, out  # the attached verdict is 'fail'
    assert {p.name for p in out_dir.iterdir()} >= {"report.json", "report.html", "certificate.json", "certificate.pdf"}
    code, out = run_cli(monkeypatch, capsys, "verify", out_dir / "certificate.json", "--model", ft_dir, "--public-key", keys[0].public_key)
    assert code == 0, out


# -- compatibility with OpenSSF model signing ------------------------------------------------------
def _model_signing_subject(folder: Path, tmp: Path) -> tuple[str, dict[str, str]]:
    """Sign `folder` with model-signing's own API (an EC key) and read back its subject digest and
    per-file digests: exactly what a user of its tools would see."""
    ms = pytest.importorskip("model_signing", reason="pip install model-signing pyopenssl (the test extra)")
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = tmp / "ec.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    ms.signing.Config().use_elliptic_key_signer(private_key=key).sign(folder, tmp / "model.sig")
    bundle = json.loads((tmp / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return statement["subject"][0]["digest"]["sha256"], {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}


def test_model_digest_equals_model_signing_subject_digest(tmp_path, tok):
    folder = tiny.save(tiny.tiny_llama(tok, seed=2), tok, tmp_path / "model")
    (folder / "extra").mkdir()
    (folder / "extra" / "vocab.txt").write_text("a b c\n")  # a nested file: POSIX relative paths
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # ignored by both
    subject, per_file = _model_signing_subject(folder, tmp_path)
    ours = digest_paths(folder)
    assert {f.path: f.sha256 for f in ours.files} == per_file
    assert ours.digest == subject


def test_model_digest_order_matches_model_signing_for_a_folder_beside_a_file_of_the_same_stem(tmp_path):
    folder = tmp_path / "m"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer" / "vocab.txt").write_text("a b c")
    subject, _ = _model_signing_subject(folder, tmp_path)
    assert digest_paths(folder).digest == subject


def test_a_certificate_of_one_format_removes_the_other_left_by_an_earlier_export(report, tmp_path):
    """Exporting only JSON into a folder holding an earlier certificate.pdf left that PDF beside a
    JSON certificate of another audit."""
    out = tmp_path / "cert"
    export_certificate(report, formats=["json", "pdf"], out_dir=out)
    with pytest.warns(UserWarning, match="certificate.pdf: it certified an earlier audit"):
        paths = export_certificate(report, formats=["json"], out_dir=out)
    assert set(paths) == {"json"} and not (out / "certificate.pdf").exists()
    (out / "certificate.pdf").mkdir()
    with pytest.raises(OutputError, match="certificate.pdf exists and is not a file"):
        export_certificate(report, formats=["pdf"], out_dir=out)


# -- layout: a heading is never left alone at the foot of a page ---------------------------------------
def _page_of(pages: list[str], pattern: str) -> int:
    return next(i for i, page in enumerate(pages) if re.search(pattern, " ".join(page.split())))


@pytest.mark.skipif(not POPPLER, reason="poppler-utils (pdftotext, pdftoppm) not installed")
@pytest.mark.parametrize("room", [20, 32, 40, 50, 60, 80, 140])
def test_the_risky_features_heading_stays_with_its_first_row(report, tmp_path, room):
    """The risky-features section starts with `room` points left on the page (the story before it
    is a spacer filling the rest). Readers saw the heading alone at the foot of a page and the table
    on the next: with 32-60 points left the heading fits and the table's first row does not. The
    heading must be on the page of the first feature row, and stay on the first page when there is
    room for both (no needless page break)."""
    from reportlab.platypus import Spacer

    from neuronlens.certificate._body import build_body
    from neuronlens.certificate._pdf import FRAME_HEIGHT, _build_pdf, _risky, _styles

    body = build_body(report)
    pdf = tmp_path / "c.pdf"
    pdf.write_bytes(_build_pdf([Spacer(1, FRAME_HEIGHT - room), *_risky(body, _styles())], body, "0" * 64))
    pages = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split("\f")
    first_id = body["risky_features"][0]["id"]
    heading, first_row = _page_of(pages, r"Risky features \(2\)"), _page_of(pages, rf"#{first_id} {LAYER} unsafe")
    assert heading == first_row, f"with {room} pt left the heading is on page {heading + 1}, its first row on page {first_row + 1}"
    if room >= 80:
        assert heading == 0, f"with {room} pt left heading and first row fit, but they were moved to the next page"


@pytest.mark.skipif(not POPPLER or shutil.which("pdfimages") is None, reason="poppler-utils not installed")
def test_pdf_says_nothing_drifted_instead_of_a_heatmap_of_x1(tmp_path_factory, tok, tmp_path):
    from test_heatmap import quiet_layer

    report = with_risk(fresh_report(tmp_path_factory, tok), verdict="pass")
    for ld in report.layers:
        quiet_layer(report, layer=ld.layer)
    pdf = export_certificate(report, formats=["pdf"], out_dir=tmp_path)["pdf"]
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split())
    shown = re.search(r"Most-drifted latents at layer (\d+) Layer (\d+): nothing drifted\. The residual stream changed by", text)
    assert shown and shown.group(1) == shown.group(2), text[:3000]
    images = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert [line.split()[2] for line in images.splitlines()[2:]].count("image") == 1  # the layer chart; no heatmap
