"""The `neuronlens` typer app, its consoles and exit codes: what every command module registers on
and prints to. It imports no command (the commands import it; ``cli/__init__.py`` imports them)."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="neuronlens",
    help="Post-fine-tuning alignment audit: SAE-based model diffing, risky features, certificates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console(soft_wrap=True)

EXIT_PASS, EXIT_FAIL, EXIT_INPUT = 0, 1, 2
