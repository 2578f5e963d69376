"""CLI commands for evidence and certificates (`neuronlens verify`, `neuronlens keygen`).

`verify` exit codes follow the audit's: 0 the certificate (and the given model files) verify,
1 something changed (each change is named), 2 bad input (missing file, unreadable key, not a
certificate, a newer schema) - raised as NeuronLensError and mapped to 2 by ``cli.main``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import EXIT_FAIL, EXIT_PASS, app, err, out


@app.command("verify")
def verify(
    certificate: Annotated[Path, typer.Argument(help="The certificate.json to check.")],
    model: Annotated[
        Optional[list[Path]],
        typer.Option("--model", help="The fine-tuned model folder (or one of its files) to check against the certificate; repeatable."),
    ] = None,
    public_key: Annotated[
        Optional[Path], typer.Option(help="The signer's Ed25519 public key (PEM, from `neuronlens keygen`).")
    ] = None,
) -> None:
    """Check a certificate's bytes, signature and schema, and recompute the digests of model files."""
    from .certificate import verify_certificate

    result = verify_certificate(certificate, models=model or [], public_key=public_key)
    out.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_PASS if result.ok else EXIT_FAIL)


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
    from .certificate import write_keypair

    pair = write_keypair(out_prefix, force=force)
    out.print(f"Private key: {pair.private_key}  (keep it secret)", highlight=False, markup=False)
    out.print(f"Public key:  {pair.public_key}  (give it to verifiers)", highlight=False, markup=False)
    out.print(f"Key id:      {pair.keyid}", highlight=False, markup=False)
    err.print("[dim]Sign: neuronlens audit ... --certificate json,pdf --signing-key "
              f"{pair.private_key}; verify: neuronlens verify certificate.json --public-key {pair.public_key}[/dim]", soft_wrap=True)
