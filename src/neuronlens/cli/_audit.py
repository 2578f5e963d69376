"""`neuronlens audit`: one fine-tune against its base, or several fine-tunes of one base.

`audit` runs data-parallel under ``torchrun``/``accelerate launch`` (WORLD_SIZE > 1): every rank
reads its share of the prompts, the statistics are all-reduced, only rank 0 writes and prints,
and rank 0 exits with the audit's code; the other ranks exit 0 once rank 0 has written everything
(torchrun exits 1 when any rank exits non-zero). Were every rank to exit 1, torchrun would SIGTERM
rank 0 whenever another rank got there first, and its exit code would read -15.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..config import AuditConfig
from ..errors import ModelLoadError, NeuronLensError
from ._app import EXIT_FAIL, EXIT_PASS, app, err
from ._config import split_values as _split
from ._config import with_config_options
from ._multi import NotAudited
from ._outputs import CHOOSE_OUT, OUTPUTS, Outputs, check_out_dir, output_names, write_audit, write_many

if TYPE_CHECKING:
    from .._distributed import DataParallel
    from ..models import ModelHandle


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
@with_config_options  # config: one option per AuditConfig field, generated (_config.py)
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
    from .._distributed import launch_from_env
    from .._progress import set_progress

    parallel = launch_from_env(device)  # None unless launched with WORLD_SIZE > 1
    main = parallel is None or parallel.is_main
    if parallel is not None:
        device = parallel.model_device(device)  # one GPU per local rank
    set_progress(not no_progress and main, console=err)
    outputs = Outputs(out_dir, html, _certificate_formats(certificate, signing_key), signing_key)
    base, fts = _models_to_audit(base, ft or [], ft_glob or [], ft_base, main)
    config.validate()  # out-of-range settings stop here, before any model is loaded
    if device_map is not None and parallel is not None:
        raise NeuronLensError(
            "--device-map spreads one model over several devices; a data-parallel audit gives each rank one device.",
            "Use one or the other: drop --device-map under torchrun/accelerate launch, or run a single process.",
        )
    common = dict(dtype=dtype, device=device, trust_remote_code=trust_remote_code, device_map=device_map, max_memory=_max_memory(max_memory))
    if ft_glob or len(fts) > 1:  # several fine-tunes of one base: one base pass
        if parallel is not None:
            raise NeuronLensError("An audit of several fine-tunes (--ft given twice, or --ft-glob) runs in one process.",
                                  "Run it without torchrun/accelerate launch, or launch one data-parallel audit per fine-tune.")
        raise typer.Exit(_audit_many(base, fts, ft_glob or [], ft_base, sae, config, common, outputs))
    raise typer.Exit(_audit_one(base, fts[0], ft_base, sae, config, common, outputs, parallel))


def _certificate_formats(certificate: str | None, signing_key: Path | None) -> list[str] | None:
    """The --certificate formats, the formats and --signing-key checked now (bad ones stop here)."""
    if certificate is not None:
        from ..certificate import check_certificate_options

        return check_certificate_options(certificate, signing_key)
    if signing_key is not None:
        raise NeuronLensError("--signing-key signs a certificate, but no certificate was asked for.",
                              "Add --certificate json (or json,pdf), or drop --signing-key.")
    return None


def _models_to_audit(base: str | None, ft: list[str], ft_glob: list[str], ft_base: str | None, main: bool) -> tuple[str, list[str]]:
    """The base and the --ft values as given, or the embedded demo pair when neither was given
    (announced by rank 0 when `main`); a half-given pair is refused."""
    from ..demo import default_pair

    if ft_glob and base is None:
        raise NeuronLensError("--ft-glob names fine-tunes of a base model, but no --base was given.", "Add --base (the model they were fine-tuned from).")
    if (base is None) != (not ft and not ft_glob):
        raise NeuronLensError("Give both --base and --ft, or neither (then the embedded demo pair is audited).", "Add the missing option.")
    if ft_base is not None and not ft and not ft_glob:  # else it would silently re-base the embedded demo adapter
        raise NeuronLensError("--ft-base names the base of the --ft adapter, but no --ft was given.",
                              "Add --base and --ft (the PEFT adapter whose base --ft-base names), or drop --ft-base.")
    if base is not None:
        return base, ft
    base, demo_ft = default_pair()
    if main:
        err.print(f"[dim]No --base/--ft given: auditing the embedded demo pair ({base} vs {demo_ft}).[/dim]")
    return base, [demo_ft]


def _audit_one(base: str, ft: str, ft_base: str | None, sae: str | None, cfg: AuditConfig, common: dict, outputs: Outputs,
               parallel: DataParallel | None) -> int:
    """`audit` of one fine-tune (data-parallel when `parallel`): only rank 0 checks, locks and writes
    --out. Returns this process's exit code."""
    from .. import alignment
    from .._io import lock_dir, removed_if_left_empty

    main = parallel is None or parallel.is_main
    # settings are checked before --out is made; a run that fails leaves no empty --out behind
    with removed_if_left_empty(outputs.folder) if main else nullcontext():
        if main:  # before any long work
            check_out_dir(outputs.folder, output_names(outputs.html, outputs.cert_formats))
        # rank 0 holds --out until its files are published: a second audit into it is refused at once
        with lock_dir(outputs.folder, "audit", CHOOSE_OUT) if main else nullcontext():
            base_h = alignment.load_model(base, **common)
            ft_h = alignment.load_model(ft, base=ft_base, **common)
            # every input is checked once, before SAEs are loaded or trained (once, by rank 0, and cached)
            report = alignment.compare_models(base_model=base_h, ft_model=ft_h, sae=sae, config=cfg, parallel=parallel)
            # An inconclusive verdict (SAEs too poor, concepts not covered) is not a pass: exit 1 too.
            code = EXIT_PASS if report.verdict in (None, "pass") else EXIT_FAIL
            if main:
                write_audit(report, outputs.folder, outputs.html, outputs.cert_formats, outputs.signing_key)
    if parallel is None:
        return code
    # Once one rank exits non-zero, torchrun stops the others (SIGTERM): rank 0's files and
    # output are complete and flushed before any rank may exit, and only rank 0 carries the
    # verdict's code, so no other rank can exit non-zero first and have rank 0 killed (-15).
    sys.stdout.flush()
    sys.stderr.flush()
    parallel.barrier()
    parallel.close()
    return code if main else EXIT_PASS


def _audit_many(base: str, fts: list[str], globs: list[str], ft_base: str | None, sae: str | None, cfg: AuditConfig,
                common: dict, outputs: Outputs) -> int:
    """`audit` of several fine-tunes of one base (--ft given more than once, --ft-glob): every
    fine-tune named and checked before any long work, one base pass, each report in its own
    subfolder of --out, the summary table printed and written beside them, all published at once.
    A fine-tune refused only as its weights load (NaN weights of a diverged checkpoint) does not
    stop the others: they are written, the summary lists it as not audited, and the error follows
    (exit 2). Returns the exit code: 1 if any fine-tune fails or is inconclusive, else 0."""
    from .. import alignment
    from .._io import lock_dir, removed_if_left_empty
    from ._multi import SUMMARY_FILES, check_subfolders, expand_fine_tunes, fine_tune_names

    specs = expand_fine_tunes(fts, globs)
    names = fine_tune_names(specs)  # a name twice: refused before any model loads
    with removed_if_left_empty(outputs.folder):
        check_out_dir(outputs.folder, list(SUMMARY_FILES), len(specs))
        check_subfolders(outputs.folder, names, OUTPUTS)
        with lock_dir(outputs.folder, "audit", CHOOSE_OUT):
            base_h = alignment.load_model(base, **common)
            ft_hs = [_load_fine_tune(spec, i, len(specs), ft_base, common) for i, spec in enumerate(specs)]
            # every fine-tune is checked against the base before the base model runs
            failed: dict[int, NeuronLensError] = {}
            reports = alignment.compare_many(base_h, ft_hs, sae=sae, config=cfg, on_error=failed.__setitem__)
            if len(failed) == len(specs):
                raise failed[0]  # nothing to write
            ok = [i for i in range(len(specs)) if i not in failed]
            skipped = [NotAudited(names[i], specs[i], failed[i].problem, failed[i].fix) for i in sorted(failed)]
            write_many(reports, [names[i] for i in ok], [specs[i] for i in ok], outputs, skipped)
    if skipped:
        raise _not_audited_error(skipped, len(specs))
    return EXIT_PASS if all(r.verdict in (None, "pass") for r in reports) else EXIT_FAIL


def _not_audited_error(skipped: list[NotAudited], n: int) -> NeuronLensError:
    """The error (exit 2) after the others' outputs are written: which fine-tunes have no report, and why."""
    first = skipped[0]
    return ModelLoadError(
        f"{len(skipped)} of {n} fine-tunes could not be audited (the other reports are written): "
        + "; ".join(f"{s.name}: {s.problem}" for s in skipped),
        first.fix or "Check those checkpoints, then audit them again.",
    )


def _load_fine_tune(spec: str, i: int, n: int, ft_base: str | None, common: dict) -> ModelHandle:
    """The handle of the (i+1)th --ft; an error names which --ft it was."""
    from .. import alignment

    try:
        return alignment.load_model(spec, base=ft_base, **common)
    except NeuronLensError as exc:
        raise type(exc)(f"--ft {spec} ({i + 1} of {n}): {exc.problem}", exc.fix) from exc
