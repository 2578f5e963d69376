"""CLI commands for evidence and certificates (`neuronlens verify`, `neuronlens keygen`).

`verify` exit codes follow the audit's: 0 the certificate is authenticated by the given public key
and nothing changed (or, with --integrity-only, it is consistent: NOT authenticated), 1 it failed
(something changed, or it is not signed by the given key; each failure is named), 2 bad input
(neither --public-key nor --integrity-only, both, a missing file, an unreadable key, not a
certificate, a newer schema) - raised as NeuronLensError and mapped to 2 by ``neuronlens.cli.main``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import EXIT_FAIL, EXIT_PASS, app, err, out


@app.command("verify")
def verify(
    certificate: Annotated[Path, typer.Argument(help="The certificate.json to check.")],
    model: Annotated[
        Optional[list[Path]],
        typer.Option("--model", help="The fine-tuned model folder (or one of its files) to check against the certificate; repeatable."),
    ] = None,
    public_key: Annotated[
        Optional[Path], typer.Option(help="The signer's Ed25519 public key (PEM, from `neuronlens keygen`): authenticates the certificate.")
    ] = None,
    integrity_only: Annotated[
        bool,
        typer.Option(
            "--integrity-only",
            help="No public key: check only the schema, inner consistency and model files. Exit 0 then means consistent, "
            "NOT authenticated (anyone could have written or re-signed the certificate).",
        ),
    ] = False,
) -> None:
    """Authenticate a certificate with the signer's public key, check its schema and consistency, and
    recompute the digests of model files.

    Exit codes: 0 authenticated and nothing changed (with --integrity-only: consistent, not
    authenticated); 1 something changed, or the certificate is not signed by the given key (or is
    unsigned); 2 bad input, including neither --public-key nor --integrity-only given.
    """
    from ..certificate import verify_certificate

    _check_verify_mode(public_key, integrity_only)
    result = verify_certificate(certificate, models=model or [], public_key=public_key, integrity_only=integrity_only)
    out.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_PASS if result.ok else EXIT_FAIL)


def _check_verify_mode(public_key: Path | None, integrity_only: bool) -> None:
    """The CLI's words for :func:`neuronlens.certificate.verify_certificate`'s mode check (exit 2)."""
    from ..certificate import CertificateError

    if public_key is None and not integrity_only:
        raise CertificateError(
            "No --public-key was given, so the certificate cannot be authenticated: anyone can write a certificate, or "
            "edit one and re-sign it with their own key, and it would still look consistent.",
            "Pass the signer's public key: --public-key SIGNER.pub. To check only the certificate's schema, inner "
            "consistency and the model files, without knowing who issued it, pass --integrity-only (exit 0 then does "
            "not mean authenticated).",
        )
    if public_key is not None and integrity_only:
        raise CertificateError(
            "Both --public-key and --integrity-only were given: an integrity-only check ignores the signer.",
            "Drop --integrity-only to authenticate the certificate with the key, or drop --public-key.",
        )


@app.command("keygen")
def keygen(
    out_prefix: Annotated[
        str,  # not Path: Path drops the trailing slash of "keys/", which asks for the pair inside that folder
        typer.Option(
            "--out",
            help="Path prefix: writes PREFIX.key (private, mode 0600) and PREFIX.pub; a folder (or a path ending in /) "
            "gets FOLDER/neuronlens-signing.key and .pub.",
        ),
    ] = "neuronlens-signing",
    force: Annotated[bool, typer.Option(help="Replace existing key files.")] = False,
) -> None:
    """Make an Ed25519 key pair for signing certificates (`neuronlens audit --signing-key PREFIX.key`)."""
    from ..certificate import write_keypair
    from ..errors import OutputError

    try:
        pair = write_keypair(out_prefix, force=force)
    except OutputError as exc:  # its fix speaks to Python callers; this one names the option
        raise OutputError(exc.problem, "Give --out a path prefix in a folder you can write to, e.g. --out "
                          "./keys/neuronlens-signing (writes .key and .pub), or free space on that disk.") from exc
    out.print(f"Private key: {pair.private_key}  (keep it secret)", highlight=False, markup=False)
    out.print(f"Public key:  {pair.public_key}  (give it to verifiers)", highlight=False, markup=False)
    out.print(f"Key id:      {pair.keyid}", highlight=False, markup=False)
    err.print("[dim]Sign: neuronlens audit ... --certificate json,pdf --signing-key "
              f"{pair.private_key}; verify: neuronlens verify certificate.json --public-key {pair.public_key}[/dim]", soft_wrap=True)
