"""The `neuronlens` command line.

Exit codes (usable as a CI gate): 0 the audit passed (or ran without risk scoring),
1 the audit failed, 2 usage or input error (nothing long was started, nothing half-written).
`screen` exits 0 once the data is ranked, 2 on bad input (malformed lines are named by number).

`audit` runs data-parallel under ``torchrun``/``accelerate launch`` (WORLD_SIZE > 1): every rank
reads its share of the prompts, the statistics are all-reduced, only rank 0 writes and prints,
and rank 0 exits with the audit's code; the other ranks exit 0 once rank 0 has written everything
(torchrun exits 1 when any rank exits non-zero). Were every rank to exit 1, torchrun would SIGTERM
rank 0 whenever another rank got there first, and its exit code would read -15.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ._cli_config import in_cli_terms, parse_values, with_config_options
from ._cli_config import split_values as _split
from .config import AuditConfig, field_help
from .errors import ConfigError, NeuronLensError

if TYPE_CHECKING:
    from ._io import Publication
    from .integrations import ScreenResult
    from .models import ModelHandle
    from .report import AuditReport

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


def _h(name: str) -> str:
    return field_help(AuditConfig, name)


def _int_list(values: list[str] | None, what: str) -> list[int] | None:
    return parse_values(values, int, f"--{what}")


def _max_memory(spec: str | None) -> dict[int | str, str] | None:
    """'0=20GiB,cpu=60GiB' -> {0: '20GiB', 'cpu': '60GiB'} (GPU indices as ints, as transformers wants)."""
    if spec is None:
        return None
    out: dict[int | str, str] = {}
    for item in _split([spec]) or []:
        dev, sep, size = item.partition("=")
        if not sep or not dev.strip() or not size.strip():
            raise NeuronLensError(f"--max-memory item {item!r} is not DEVICE=SIZE.", "Pass e.g. --max-memory 0=20GiB,cpu=60GiB.")
        dev = dev.strip()
        out[int(dev) if dev.isdigit() else dev] = _memory_size(item, size.strip())
    return out


def _memory_size(item: str, size: str) -> int | str:
    """One --max-memory size, checked now as accelerate will read it: a bad one failed only when the
    weights loaded, as a damaged checkpoint. Plain digits are bytes (accelerate takes those as an int)."""
    if size.isdigit():
        return int(size)
    try:
        from accelerate.utils import convert_file_size_to_int
    except ImportError:  # --device-map then says accelerate is needed
        return size
    try:
        convert_file_size_to_int(size)
    except ValueError:
        raise NeuronLensError(f"--max-memory item {item!r}: {size!r} is not a size.",
                              "Give sizes with a unit (20GiB, 500MB) or in bytes, e.g. --max-memory 0=20GiB,cpu=60GiB.") from None
    return size


_IO, _RUNTIME = "Inputs and outputs", "Runtime"


@app.command()
@with_config_options  # config: one option per AuditConfig field, generated (_cli_config.py)
def audit(
    *,
    base: Annotated[Optional[str], typer.Option(help="Base model: hub id, folder, .gguf, or alias. Default: the embedded demo pair.", rich_help_panel=_IO)] = None,
    ft: Annotated[Optional[list[str]], typer.Option(metavar="<str>", help="Fine-tuned model: hub id, folder, .gguf or PEFT adapter folder. Repeat it (--ft A --ft B) to audit several fine-tunes of one base: see --ft-glob.", rich_help_panel=_IO)] = None,
    ft_glob: Annotated[Optional[list[str]], typer.Option(metavar="<pattern>", help="Audit every fine-tune this quoted pattern matches (e.g. 'ckpts/checkpoint-*', in natural order; with any --ft) against one base pass. Each report goes in a subfolder of --out named after its fine-tune, beside summary.md, summary.json and scores.png (score by step, when the names end in step numbers). Exit code: 1 if any fine-tune fails or is inconclusive, else 0.", rich_help_panel=_IO)] = None,
    ft_base: Annotated[Optional[str], typer.Option(help="Base for a PEFT adapter whose adapter_config.json does not name a reachable one.", rich_help_panel=_IO)] = None,
    sae: Annotated[Optional[str], typer.Option(help="SAEs: a folder (SAELens, sparsify, Gemma Scope 1/2 or Llama Scope layout), a sae-lens release (RELEASE or RELEASE:SAE_ID) or a hub repo id (default: shipped, cached or trained).", rich_help_panel=_IO)] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.json (and its statistics sidecar); with several fine-tunes, a subfolder each and the summary.", rich_help_panel=_IO)] = Path("neuronlens-out"),
    html: Annotated[bool, typer.Option("--html", help="Also write the self-contained HTML report (report.html).", rich_help_panel=_IO)] = False,
    certificate: Annotated[Optional[str], typer.Option(help="Write the alignment certificate in these formats, e.g. json,pdf.", rich_help_panel=_IO)] = None,
    signing_key: Annotated[Optional[Path], typer.Option(help="Ed25519 private key (PEM) to sign the certificate; see `neuronlens keygen`.", rich_help_panel=_IO)] = None,
    config: AuditConfig,  # becomes one option per AuditConfig field (with_config_options)
    dtype: Annotated[str, typer.Option(help="Model dtype: auto (float32 on CPU), float32, bfloat16, float16.", rich_help_panel=_RUNTIME)] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.", rich_help_panel=_RUNTIME)] = "auto",
    device_map: Annotated[Optional[str], typer.Option(help="Spread each model over this machine's devices (transformers device_map: auto, balanced, sequential, cpu); needs accelerate.", rich_help_panel=_RUNTIME)] = None,
    max_memory: Annotated[Optional[str], typer.Option(help="With --device-map: the most each device may hold, e.g. 0=20GiB,cpu=60GiB.", rich_help_panel=_RUNTIME)] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow model repos to run their own Python code (off by default).", rich_help_panel=_RUNTIME)] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.", rich_help_panel=_RUNTIME)] = False,
) -> None:
    """Audit a fine-tuned model against its base: drift per layer and latent, risky features, verdict.

    Several fine-tunes of one base (--ft repeated, or --ft-glob): one base pass, a report per fine-tune in its own subfolder of --out, and a summary table; exit 1 if any fine-tune fails or is inconclusive, else 0.

    Under torchrun or accelerate launch the prompts are sharded over the ranks (data-parallel)."""
    from . import alignment
    from ._distributed import launch_from_env
    from ._io import lock_dir, removed_if_left_empty
    from ._progress import set_progress
    from .demo import default_pair

    parallel = launch_from_env(device)  # None unless launched with WORLD_SIZE > 1
    main = parallel is None or parallel.is_main
    if parallel is not None:
        device = parallel.model_device(device)  # one GPU per local rank
    set_progress(not no_progress and main, console=err)
    cert_formats = None
    if certificate is not None:
        from .certificate import check_certificate_options

        cert_formats = check_certificate_options(certificate, signing_key)  # bad formats or key: stop now
    elif signing_key is not None:
        raise NeuronLensError("--signing-key signs a certificate, but no certificate was asked for.",
                              "Add --certificate json (or json,pdf), or drop --signing-key.")
    if ft_glob and base is None:
        raise NeuronLensError("--ft-glob names fine-tunes of a base model, but no --base was given.", "Add --base (the model they were fine-tuned from).")
    if (base is None) != (not ft and not ft_glob):
        raise NeuronLensError("Give both --base and --ft, or neither (then the embedded demo pair is audited).", "Add the missing option.")
    if ft_base is not None and not ft and not ft_glob:  # else it would silently re-base the embedded demo adapter
        raise NeuronLensError("--ft-base names the base of the --ft adapter, but no --ft was given.",
                              "Add --base and --ft (the PEFT adapter whose base --ft-base names), or drop --ft-base.")
    if base is None:
        base, demo_ft = default_pair()
        ft = [demo_ft]
        if main:
            err.print(f"[dim]No --base/--ft given: auditing the embedded demo pair ({base} vs {demo_ft}).[/dim]")
    cfg = config
    cfg.validate()  # out-of-range settings stop here, before any model is loaded
    if device_map is not None and parallel is not None:
        raise NeuronLensError(
            "--device-map spreads one model over several devices; a data-parallel audit gives each rank one device.",
            "Use one or the other: drop --device-map under torchrun/accelerate launch, or run a single process.",
        )
    common = dict(dtype=dtype, device=device, trust_remote_code=trust_remote_code, device_map=device_map, max_memory=_max_memory(max_memory))
    if ft_glob or len(ft or []) > 1:  # several fine-tunes of one base: one base pass
        if parallel is not None:
            raise NeuronLensError("An audit of several fine-tunes (--ft given twice, or --ft-glob) runs in one process.",
                                  "Run it without torchrun/accelerate launch, or launch one data-parallel audit per fine-tune.")
        raise typer.Exit(_audit_many(base, ft or [], ft_glob or [], ft_base, sae, cfg, common, _Outputs(out_dir, html, cert_formats, signing_key)))
    # settings are checked before --out is made; a run that fails leaves no empty --out behind
    with removed_if_left_empty(out_dir) if main else nullcontext():
        if main:  # before any long work
            _check_out_dir(out_dir, _output_names(html, cert_formats))
        # rank 0 holds --out until its files are published: a second audit into it is refused at once
        with lock_dir(out_dir, "audit", _CHOOSE_OUT) if main else nullcontext():
            base_h = alignment.load_model(base, **common)
            ft_h = alignment.load_model(ft[0], base=ft_base, **common)
            # every input is checked once, before SAEs are loaded or trained (once, by rank 0, and cached)
            report = alignment.compare_models(base_model=base_h, ft_model=ft_h, sae=sae, config=cfg, parallel=parallel)
            # An inconclusive verdict (SAEs too poor, concepts not covered) is not a pass: exit 1 too.
            code = EXIT_PASS if report.verdict in (None, "pass") else EXIT_FAIL
            if main:
                _write_audit(report, out_dir, html, cert_formats, signing_key)
    if parallel is not None:
        # Once one rank exits non-zero, torchrun stops the others (SIGTERM): rank 0's files and
        # output are complete and flushed before any rank may exit, and only rank 0 carries the
        # verdict's code, so no other rank can exit non-zero first and have rank 0 killed (-15).
        sys.stdout.flush()
        sys.stderr.flush()
        parallel.barrier()
        parallel.close()
        if not main:
            code = EXIT_PASS
    raise typer.Exit(code)


AUDIT_MIN_FREE = 64 * 2**20
"""Free space an audit asks of its --out disk before it starts. What it writes is mostly the
statistics sidecar: 13 float64 numbers per SAE latent for each layer, probe set and read (the
layout of AuditSums; a tiny audit's sidecar, 128 latents, held exactly that plus 37 KB of names
and small sums): about 10 MB for the default audit of the embedded model (2,304 latents, 3 layers,
7 probe sets, 2 reads), 72 MB for the same with 16,384-latent SAEs. Should a larger audit still
fill the disk, its files are staged first, so the folder is left as it was."""
_CHOOSE_OUT = "choose another output folder (--out)"


def _output_names(html: bool, cert_formats: list[str] | None) -> list[str]:
    names = ["report.json", "report.stats.safetensors"] + (["report.html"] if html else [])
    return names + [f"certificate.{f}" for f in cert_formats or []]


_OUTPUTS = _output_names(True, ["json", "pdf"])
"""Every file an audit may write into --out: when a run does not write one (no --html this time),
an earlier run's copy is removed, for it would sit beside a report it does not describe."""


def _check_out_dir(out_dir: Path, names: list[str], n_audits: int = 1) -> None:
    """Refuse, before any long work, an --out that cannot take the audit's files (`names`): not
    writable, an output name taken by a folder, or a nearly full disk."""
    from ._io import check_free_space, check_output_targets, ensure_writable_dir, remove_stale_staging

    folder = ensure_writable_dir(out_dir, choose=f"{_CHOOSE_OUT}, e.g. --out ./neuronlens-out")
    check_output_targets(folder, names)
    remove_stale_staging(folder)  # a killed audit's staged files: their space counts below
    check_free_space(folder, AUDIT_MIN_FREE * n_audits, "an audit's report, statistics and certificates", _CHOOSE_OUT)


def _print_summary(report: AuditReport) -> None:
    out.print(report.summary(), highlight=False, markup=False)
    if report.risk is not None and report.risk.risky_features:
        out.print("Risky features:", highlight=False)
        for f in report.risk.risky_features[:5]:
            out.print(f"  {f}", highlight=False, markup=False)


def _write_audit(report: AuditReport, out_dir: Path, html: bool, cert_formats: list[str] | None, signing_key: Path | None) -> None:
    """Rank 0's (or the only process's) part of `audit`: summary, then report, HTML, certificates.
    The summary comes first so that a failed write cannot lose the verdict. The files are staged
    and published together (publish_dir): --out holds this audit's complete set, or the earlier
    one untouched."""
    from ._io import publish_dir
    from .certificate import certificate_files

    _print_summary(report)
    certs = certificate_files(report, cert_formats, signing_key) if cert_formats else {}
    try:
        with publish_dir(out_dir, merge=True, stale=_OUTPUTS) as staged:
            _stage_report(report, staged.path, html, certs)
    except OSError as exc:
        raise _write_error(out_dir, exc) from exc
    _print_written(staged)


def _stage_report(report: AuditReport, folder: Path, html: bool, certs: dict[str, bytes]) -> None:
    """One audit's files (report and sidecar, HTML, certificates) written into `folder`."""
    from ._io import write_bytes_atomic

    report.save(folder / "report.json")
    if html:
        report.to_html(folder / "report.html")
    for name, data in certs.items():
        write_bytes_atomic(folder / name, data)


def _write_error(out_dir: Path, exc: OSError) -> NeuronLensError:
    from ._io import os_reason
    from .errors import OutputError

    return OutputError(f"Could not write the audit's files into {out_dir}: {os_reason(exc)}. The files there were left as they were.",
                       f"Free space on that disk or fix its permissions, or {_CHOOSE_OUT}.")


def _print_written(staged: Publication) -> None:
    err.print(f"[dim]Written: {escape(', '.join(str(p) for p in staged.written))}[/dim]")
    if staged.removed:
        err.print(f"[dim]Removed from an earlier audit in this folder (they described another run): "
                  f"{escape(', '.join(p.name for p in staged.removed))}[/dim]")


@dataclass(frozen=True)
class _Outputs:
    """What an audit writes where: --out, --html, the --certificate formats and --signing-key."""

    folder: Path
    html: bool
    cert_formats: list[str] | None
    signing_key: Path | None


def _audit_many(base: str, fts: list[str], globs: list[str], ft_base: str | None, sae: str | None, cfg: AuditConfig,
                common: dict, outputs: _Outputs) -> int:
    """`audit` of several fine-tunes of one base (--ft given more than once, --ft-glob): every
    fine-tune named and checked before any long work, one base pass, each report in its own
    subfolder of --out, the summary table printed and written beside them, all published at once.
    Returns the exit code: 1 if any fine-tune fails or is inconclusive, else 0."""
    from . import alignment
    from ._cli_multi import SUMMARY_FILES, check_subfolders, expand_fine_tunes, fine_tune_names
    from ._io import lock_dir, removed_if_left_empty

    specs = expand_fine_tunes(fts, globs)
    names = fine_tune_names(specs)  # a name twice: refused before any model loads
    with removed_if_left_empty(outputs.folder):
        _check_out_dir(outputs.folder, list(SUMMARY_FILES), len(specs))
        check_subfolders(outputs.folder, names, _OUTPUTS)
        with lock_dir(outputs.folder, "audit", _CHOOSE_OUT):
            base_h = alignment.load_model(base, **common)
            ft_hs = [_load_fine_tune(spec, i, len(specs), ft_base, common) for i, spec in enumerate(specs)]
            # every fine-tune is checked against the base before the base model runs
            reports = alignment.compare_many(base_h, ft_hs, sae=sae, config=cfg)
            _write_many(reports, names, specs, outputs)
    return EXIT_PASS if all(r.verdict in (None, "pass") for r in reports) else EXIT_FAIL


def _load_fine_tune(spec: str, i: int, n: int, ft_base: str | None, common: dict) -> ModelHandle:
    """The handle of the (i+1)th --ft; an error names which --ft it was."""
    from . import alignment

    try:
        return alignment.load_model(spec, base=ft_base, **common)
    except NeuronLensError as exc:
        raise type(exc)(f"--ft {spec} ({i + 1} of {n}): {exc.problem}", exc.fix) from exc


def _write_many(reports: list[AuditReport], names: list[str], specs: list[str], outputs: _Outputs) -> None:
    """Each fine-tune's summary, then the table; then every file staged and published together:
    --out holds this audit's complete set, or the earlier one untouched."""
    from ._cli_multi import SUMMARY_FILES, stage_summary, summary_rows, summary_text
    from ._io import publish_dir
    from .certificate import certificate_files

    for i, (name, report) in enumerate(zip(names, reports)):
        out.print(f"{'' if i == 0 else chr(10)}== {name} ({i + 1} of {len(reports)}) ==", highlight=False, markup=False)
        _print_summary(report)
    rows = summary_rows(reports, names, specs)
    out.print("\n" + summary_text(rows), highlight=False, markup=False)
    fmts, key = outputs.cert_formats, outputs.signing_key
    certs = [certificate_files(r, fmts, key) if fmts else {} for r in reports]
    try:
        with publish_dir(outputs.folder, merge=True, stale=[*_OUTPUTS, *SUMMARY_FILES]) as staged:
            for name, report, files in zip(names, reports, certs):
                (staged.path / name).mkdir()
                _stage_report(report, staged.path / name, outputs.html, files)
            notes = stage_summary(staged.path, rows, reports[0].base)
    except OSError as exc:
        raise _write_error(outputs.folder, exc) from exc
    for note in notes:
        err.print(f"[yellow]Note:[/yellow] {escape(note)}", highlight=False)
    _print_written(staged)


_ORGANISM_BASE_HELP = ("Base model to fine-tune: hub id, folder, .gguf, or alias (default: the embedded SmolLM2-135M-Instruct, "
                       "the model the default threshold was calibrated on).")
organisms_app = typer.Typer(help="Model organisms: fine-tunes with known alignment, for proving the detector.", no_args_is_help=True)
app.add_typer(organisms_app, name="organisms")
demo_app = typer.Typer(help="The embedded demo pair (shipped adapter and SAEs).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@organisms_app.command("list")
def organisms_list(
    seed: Annotated[int, typer.Option(min=0, help="Say whether each organism is built for this training seed (0 or more).")] = 0,
    recipe: Annotated[str, typer.Option(help="Say whether each organism is built with this recipe (organisms.RECIPES).")] = "default",
    base_model: Annotated[Optional[str], typer.Option("--base", help=_ORGANISM_BASE_HELP)] = None,
) -> None:
    """List the model organisms, their ground truth and whether they are built (cached) for a seed, recipe and base model."""
    from .models import DEFAULT_BASE, load_model
    from .organisms import ORGANISMS, organism_dir, recipe_config

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
    from ._progress import set_progress
    from .models import DEFAULT_BASE, load_model
    from .organisms import ORGANISMS, build_organism, recipe_config

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


@demo_app.command("build")
def demo_build(
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")] = False,
) -> None:
    """Rebuild the shipped demo adapter and SAEs inside the installed package; print their sha256."""
    from ._progress import set_progress
    from .demo import build_demo

    set_progress(not no_progress, console=err)
    for rel, digest in build_demo().items():
        out.print(f"{digest}  {rel}")


@app.command("probes")
def list_probes() -> None:
    """List the built-in probe sets and their sizes."""
    from .probes import builtin_names, load_probe_set

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
    from . import alignment
    from ._io import ensure_writable_dir, removed_if_left_empty
    from ._progress import set_progress
    from .integrations import screen_dataset
    from .integrations import read_examples

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
    from ._io import os_reason
    from .errors import OutputError

    try:
        return result.write_jsonl(out_path)
    except OSError as exc:
        raise OutputError(f"Could not write the ranking to {out_path}: {os_reason(exc)}. Nothing was written there.",
                          f"Free space on that disk or fix its permissions, or {_SCREEN_CHOOSE}.") from exc


from . import _cli_evidence  # noqa: E402,F401 - registers `verify` and `keygen`


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


if __name__ == "__main__":
    main()
