"""The `neuronlens` command line.

Exit codes (usable as a CI gate): 0 the audit passed (or ran without risk scoring),
1 the audit failed, 2 usage or input error (nothing long was started, nothing half-written).
`screen` exits 0 once the data is ranked, 2 on bad input (malformed lines are named by number).

`audit` runs data-parallel under ``torchrun``/``accelerate launch`` (WORLD_SIZE > 1): every rank
reads its share of the prompts, the statistics are all-reduced, only rank 0 writes and prints,
and rank 0 exits with the audit's code; the other ranks exit 0 once rank 0 has written everything
(torchrun exits 1 when any rank exits non-zero). Were every rank to exit 1, torchrun would SIGTERM
rank 0 whenever another rank got there first, and its exit code would read -15.

Layout: ``_app`` holds the typer app, its consoles and exit codes and imports no command; each
command module registers on it when imported below, in the order ``neuronlens --help`` lists them.
"""

from __future__ import annotations

import sys

from ..errors import ConfigError, NeuronLensError
from ._app import EXIT_FAIL, EXIT_INPUT, EXIT_PASS, app, err, out
from ._config import in_cli_terms

# Each command module registers its commands on `app` when imported: this order is the order
# `neuronlens --help` lists them in (typer lists the commands, then the groups). One import a line:
# a sorted `from . import a, b` would reorder the listing.
from . import _audit  # `audit`
from . import _organisms  # `organisms list|build`
from . import _demo  # `demo build`
from . import _screen  # `probes`, `screen`
from . import _evidence  # `verify`, `keygen`

_COMMAND_MODULES = (_audit, _organisms, _demo, _screen, _evidence)

__all__ = ["EXIT_FAIL", "EXIT_INPUT", "EXIT_PASS", "app", "err", "main", "out"]


def main() -> None:
    """Console entry point: maps NeuronLens input errors to exit code 2 with a clear message."""
    try:
        app(standalone_mode=True)
    except NeuronLensError as exc:
        from rich.markup import escape  # messages may quote paths or library errors with [brackets]

        if isinstance(exc, ConfigError):  # settings' messages name AuditConfig's fields: show the flags
            exc = in_cli_terms(exc)

        err.print(f"{escape(_rank_prefix())}[bold red]Error:[/bold red] {escape(exc.problem)}", highlight=False, soft_wrap=True)
        if exc.fix:
            err.print(f"[bold]How to fix:[/bold] {escape(exc.fix)}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_INPUT)


def _rank_prefix() -> str:
    """'[rank N] ' in a data-parallel run (every rank reports its own errors), else ''."""
    import os

    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f"[rank {rank}] " if world not in ("", "0", "1") else ""
