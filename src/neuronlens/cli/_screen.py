"""`neuronlens probes` (the built-in probe sets) and `neuronlens screen` (fine-tuning data ranked by
risk on the base model, before any fine-tune). `screen` exits 0 once the data is ranked, 2 on bad
input (malformed lines are named by number)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from ..config import AuditConfig, field_help
from ..errors import NeuronLensError
from ._app import EXIT_PASS, app, err, out
from ._config import parse_values
from ._config import split_values as _split

if TYPE_CHECKING:
    from ..integrations import ScreenResult


def _h(name: str) -> str:
    return field_help(AuditConfig, name)


def _int_list(values: list[str] | None, what: str) -> list[int] | None:
    return parse_values(values, int, f"--{what}")


@app.command("probes")
def list_probes() -> None:
    """List the built-in probe sets and their sizes."""
    from ..probes import builtin_names, load_probe_set

    for name in builtin_names():
        out.print(f"{name:24s} {len(load_probe_set(name).prompts):4d} prompts")


@app.command("screen")
def screen(
    data: Annotated[Path, typer.Argument(help='Fine-tuning data, JSONL: {"messages": [...]} (chat) or {"prompt": ..., "completion": ...} per line.')],
    base: Annotated[str, typer.Option(help="Base model the data will fine-tune: hub id, folder, .gguf, or alias.")],
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Write every example, riskiest first, as JSONL (line number, risk, top concepts with their coordinates).")] = None,
    top: Annotated[int, typer.Option(min=0, help="How many of the riskiest examples to print (the --out file holds all).")] = 10,
    layers: Annotated[Optional[list[str]], typer.Option(help="Decoder layers to read (default: the SAEs' layers, or 30/50/70% of depth).")] = None,
    sae: Annotated[Optional[str], typer.Option(help="SAEs: a folder (SAELens, sparsify, Gemma Scope 1/2 or Llama Scope layout), a sae-lens release (RELEASE or RELEASE:SAE_ID) or a hub repo id (default: shipped, cached or trained).")] = None,
    concepts: Annotated[Optional[list[str]], typer.Option(help=_h("concepts"))] = None,
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="Skip malformed lines (reported) instead of stopping.")] = False,
    token_budget: Annotated[int, typer.Option(help=_h("token_budget"))] = AuditConfig.token_budget,
    dtype: Annotated[str, typer.Option(help="Model dtype: auto (float32 on CPU), float32, bfloat16, float16.")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Allow model repos to run their own Python code (off by default).")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")] = False,
) -> None:
    """Rank fine-tuning examples by how strongly their assistant turns express risk concepts on the base model."""
    from .. import alignment
    from .._io import ensure_writable_dir, removed_if_left_empty
    from .._progress import set_progress
    from ..integrations import screen_dataset
    from ..integrations import read_examples

    set_progress(not no_progress, console=err)
    if out_path is not None and out_path.is_dir():
        raise NeuronLensError(f"--out {str(out_path)!r} is a folder.", "Give a file path, e.g. --out ranked.jsonl.")
    layer_list = _int_list(layers, "layers")
    read_examples(data, skip_bad_lines=skip_bad_lines)  # bad data stops here, before any model loads or --out's folder is made
    with removed_if_left_empty(out_path.parent) if out_path is not None else nullcontext():
        if out_path is not None:
            ensure_writable_dir(out_path.parent, choose=_SCREEN_CHOOSE)
        base_h = alignment.load_model(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        sae_set = alignment.load_sae(base_h, layer_list, source=sae) if sae is not None else None
        result = screen_dataset(
            base_h, data, sae_set, _split(concepts), layers=layer_list, skip_bad_lines=skip_bad_lines, token_budget=token_budget
        )
        written = _write_ranking(result, out_path) if out_path is not None else None  # first: printing cannot lose the ranking
    for s in result.skipped:  # the reason may quote the line's own text: escaped, it prints as it is
        err.print(f"[yellow]Skipped line {s.line}:[/yellow] {escape(s.reason)}", highlight=False, emoji=False, soft_wrap=True)
    if cut := sorted(e.line for e in result.examples if e.truncated):
        shown = ", ".join(map(str, cut[:10])) + (f" and {len(cut) - 10} more" if len(cut) > 10 else "")
        err.print(f"[yellow]Note:[/yellow] {len(cut)} example(s) have an assistant turn longer than {result.max_tokens} tokens "
                  f"with its context; each was screened on its first tokens only (line(s) {shown}).", highlight=False, soft_wrap=True)
    out.print(
        f"Screened {len(result.examples)} example(s) of {data} with {base_h.name} (layers {', '.join(map(str, result.layers))}; "
        f"{len(result.skipped)} line(s) skipped). Concepts scored: {', '.join(result.concepts)}.",
        highlight=False, markup=False, emoji=False,
    )
    if result.not_scored:
        out.print(f"Not scored (too few SAE latents tied to them): {', '.join(result.not_scored)}.", highlight=False, markup=False)
    for e in result.top(top):
        why = ", ".join(f"{h.concept} {h.coordinate:+.2f}" for h in e.concepts) or "-"
        risk = "   n/a" if e.risk is None else f"{e.risk:+.2f}"
        out.print(f"{e.rank:4d}. line {e.line:<6d} risk {risk}  [{why}]  {e.preview}", highlight=False, markup=False, emoji=False)
    if written is not None:
        err.print(f"[dim]Written: {escape(str(written))}[/dim]")
    raise typer.Exit(EXIT_PASS)


_SCREEN_CHOOSE = "give --out a file in a folder you can write to, e.g. --out ./ranked.jsonl"


def _write_ranking(result: ScreenResult, out_path: Path) -> Path:
    """`screen --out`: the ranking, written atomically; a full disk is an OutputError, the file's
    earlier content untouched."""
    from .._io import os_reason
    from ..errors import OutputError

    try:
        return result.write_jsonl(out_path)
    except OSError as exc:
        raise OutputError(f"Could not write the ranking to {out_path}: {os_reason(exc)}. Nothing was written there.",
                          f"Free space on that disk or fix its permissions, or {_SCREEN_CHOOSE}.") from exc

