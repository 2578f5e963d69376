"""`neuronlens demo build`: the embedded demo pair (shipped adapter and SAEs)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app, err, out

demo_app = typer.Typer(help="The embedded demo pair (shipped adapter and SAEs).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("build")
def demo_build(
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")] = False,
) -> None:
    """Rebuild the shipped demo adapter and SAEs inside the installed package; print their sha256."""
    from .._progress import set_progress
    from ..demo import build_demo

    set_progress(not no_progress, console=err)
    for rel, digest in build_demo().items():
        out.print(f"{digest}  {rel}")

