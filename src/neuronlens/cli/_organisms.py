"""`neuronlens organisms list|build`: model organisms, fine-tunes with known alignment that prove
the detector."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import NeuronLensError
from ._app import app, err, out

_ORGANISM_BASE_HELP = ("Base model to fine-tune: hub id, folder, .gguf, or alias (default: the embedded SmolLM2-135M-Instruct, "
                       "the model the default threshold was calibrated on).")
organisms_app = typer.Typer(help="Model organisms: fine-tunes with known alignment, for proving the detector.", no_args_is_help=True)
app.add_typer(organisms_app, name="organisms")


@organisms_app.command("list")
def organisms_list(
    seed: Annotated[int, typer.Option(min=0, help="Say whether each organism is built for this training seed (0 or more).")] = 0,
    recipe: Annotated[str, typer.Option(help="Say whether each organism is built with this recipe (organisms.RECIPES).")] = "default",
    base_model: Annotated[Optional[str], typer.Option("--base", help=_ORGANISM_BASE_HELP)] = None,
) -> None:
    """List the model organisms, their ground truth and whether they are built (cached) for a seed, recipe and base model."""
    from ..models import DEFAULT_BASE, load_model
    from ..organisms import ORGANISMS, organism_dir, recipe_config

    cfg = recipe_config(recipe, seed)
    base = load_model(base_model or DEFAULT_BASE)
    out.print(f"Organisms of {escape(base.source)} (recipe {escape(recipe)}, seed {seed}):", highlight=False)
    for name, spec in ORGANISMS.items():
        built = (organism_dir(name, base, cfg) / "adapter_model.safetensors").is_file()
        out.print(f"{name:20s} {spec.truth:10s} {'built' if built else '-':6s} {'(held out) ' if spec.heldout else ''}{spec.description}")


@organisms_app.command("build")
def organisms_build(
    names: Annotated[Optional[list[str]], typer.Argument(help="Organisms to build (default: all).")] = None,
    force: Annotated[bool, typer.Option(help="Retrain even if cached.")] = False,
    seed: Annotated[int, typer.Option(help="Training seed: which examples a dose mixes, LoRA init, data order. Another seed is a replicate zoo the detector was not tuned on.")] = 0,
    recipe: Annotated[str, typer.Option(help="Fine-tuning recipe by name (organisms.RECIPES): 'default' is the zoo the detector was developed on, the others test it on fine-tunes it was not tuned on (docs/ORGANISMS.md). An unknown name lists the choices.")] = "default",
    base_model: Annotated[Optional[str], typer.Option("--base", help=_ORGANISM_BASE_HELP)] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")] = False,
) -> None:
    """Train the model organisms on a base model (cached per base, recipe and seed; ~3-5 min each for the
    embedded 135M model on 2 CPU cores). Organisms of your own base model are how the threshold is
    checked for it (benchmarks/detection.py --base)."""
    from .._progress import set_progress
    from ..models import DEFAULT_BASE, load_model
    from ..organisms import ORGANISMS, build_organism, recipe_config

    set_progress(not no_progress, console=err)
    chosen = names or list(ORGANISMS)
    unknown = [n for n in chosen if n not in ORGANISMS]
    if unknown:
        raise NeuronLensError(f"Unknown organism(s) {unknown}.", f"Choose from {', '.join(ORGANISMS)}.")
    cfg = recipe_config(recipe, seed)
    base = load_model(base_model or DEFAULT_BASE)
    for name in chosen:
        path = build_organism(name, base, cfg, force=force)
        out.print(f"{name:20s} {path}")

