"""What `neuronlens audit` writes into --out and prints: the checks of --out before any long work,
the summary, and the report, HTML and certificates staged and published together (one audit, or
one subfolder per fine-tune beside the summary table)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from ..errors import NeuronLensError
from ._app import err, out

if TYPE_CHECKING:
    from .._io import Publication
    from ..report import AuditReport
    from ._multi import NotAudited

AUDIT_MIN_FREE = 64 * 2**20
"""Free space an audit asks of its --out disk before it starts. What it writes is mostly the
statistics sidecar: 13 float64 numbers per SAE latent for each layer, probe set and read (the
layout of AuditSums; a tiny audit's sidecar, 128 latents, held exactly that plus 37 KB of names
and small sums): about 10 MB for the default audit of the embedded model (2,304 latents, 3 layers,
7 probe sets, 2 reads), 72 MB for the same with 16,384-latent SAEs. Should a larger audit still
fill the disk, its files are staged first, so the folder is left as it was."""
CHOOSE_OUT = "choose another output folder (--out)"


def output_names(html: bool, cert_formats: list[str] | None) -> list[str]:
    names = ["report.json", "report.stats.safetensors"] + (["report.html"] if html else [])
    return names + [f"certificate.{f}" for f in cert_formats or []]


OUTPUTS = output_names(True, ["json", "pdf"])
"""Every file an audit may write into --out: when a run does not write one (no --html this time),
an earlier run's copy is removed, for it would sit beside a report it does not describe."""


def check_out_dir(out_dir: Path, names: list[str], n_audits: int = 1) -> None:
    """Refuse, before any long work, an --out that cannot take the audit's files (`names`): not
    writable, an output name taken by a folder, or a nearly full disk."""
    from .._io import check_free_space, check_output_targets, ensure_writable_dir, remove_stale_staging

    folder = ensure_writable_dir(out_dir, choose=f"{CHOOSE_OUT}, e.g. --out ./neuronlens-out")
    check_output_targets(folder, names)
    remove_stale_staging(folder)  # a killed audit's staged files: their space counts below
    check_free_space(folder, AUDIT_MIN_FREE * n_audits, "an audit's report, statistics and certificates", CHOOSE_OUT)


def print_summary(report: AuditReport) -> None:
    out.print(report.summary(), highlight=False, markup=False)
    if report.risk is not None and report.risk.risky_features:
        out.print("Risky features:", highlight=False)
        for f in report.risk.risky_features[:5]:
            out.print(f"  {f}", highlight=False, markup=False)


def write_audit(report: AuditReport, out_dir: Path, html: bool, cert_formats: list[str] | None, signing_key: Path | None) -> None:
    """Rank 0's (or the only process's) part of `audit`: summary, then report, HTML, certificates.
    The summary comes first so that a failed write cannot lose the verdict. The files are staged
    and published together (publish_dir): --out holds this audit's complete set, or the earlier
    one untouched."""
    from .._io import publish_dir
    from ..certificate import certificate_files

    print_summary(report)
    certs = certificate_files(report, cert_formats, signing_key) if cert_formats else {}
    try:
        with publish_dir(out_dir, merge=True, stale=OUTPUTS) as staged:
            stage_report(report, staged.path, html, certs)
    except OSError as exc:
        raise write_error(out_dir, exc) from exc
    print_written(staged)


def stage_report(report: AuditReport, folder: Path, html: bool, certs: dict[str, bytes]) -> None:
    """One audit's files (report and sidecar, HTML, certificates) written into `folder`."""
    from .._io import write_bytes_atomic

    report.save(folder / "report.json")
    if html:
        report.to_html(folder / "report.html")
    for name, data in certs.items():
        write_bytes_atomic(folder / name, data)


def write_error(out_dir: Path, exc: OSError) -> NeuronLensError:
    from .._io import os_reason
    from ..errors import OutputError

    return OutputError(f"Could not write the audit's files into {out_dir}: {os_reason(exc)}. The files there were left as they were.",
                       f"Free space on that disk or fix its permissions, or {CHOOSE_OUT}.")


def print_written(staged: Publication) -> None:
    err.print(f"[dim]Written: {escape(', '.join(str(p) for p in staged.written))}[/dim]")
    if staged.removed:
        err.print(f"[dim]Removed from an earlier audit in this folder (they described another run): "
                  f"{escape(', '.join(p.name for p in staged.removed))}[/dim]")


@dataclass(frozen=True)
class Outputs:
    """What an audit writes where: --out, --html, the --certificate formats and --signing-key."""

    folder: Path
    html: bool
    cert_formats: list[str] | None
    signing_key: Path | None


def write_many(reports: list[AuditReport], names: list[str], specs: list[str], outputs: Outputs,
               not_audited: Sequence[NotAudited] = ()) -> None:
    """Each fine-tune's summary, then the table (and the fine-tunes not audited); then every file
    staged and published together: --out holds this audit's complete set, or the earlier one untouched."""
    from .._io import publish_dir
    from ..certificate import certificate_files
    from ._multi import SUMMARY_FILES, stage_summary, summary_rows, summary_text

    for i, (name, report) in enumerate(zip(names, reports)):
        out.print(f"{'' if i == 0 else chr(10)}== {name} ({i + 1} of {len(reports)}) ==", highlight=False, markup=False)
        print_summary(report)
    rows = summary_rows(reports, names, specs)
    out.print("\n" + summary_text(rows, not_audited), highlight=False, markup=False)
    fmts, key = outputs.cert_formats, outputs.signing_key
    certs = [certificate_files(r, fmts, key) if fmts else {} for r in reports]
    try:
        # a fine-tune not audited this time leaves no earlier run's report behind
        with publish_dir(outputs.folder, merge=True, stale=[*OUTPUTS, *SUMMARY_FILES, *(n.name for n in not_audited)]) as staged:
            for name, report, files in zip(names, reports, certs):
                (staged.path / name).mkdir()
                stage_report(report, staged.path / name, outputs.html, files)
            notes = stage_summary(staged.path, rows, reports[0].base, not_audited)
    except OSError as exc:
        raise write_error(outputs.folder, exc) from exc
    for note in notes:
        err.print(f"[yellow]Note:[/yellow] {escape(note)}", highlight=False)
    print_written(staged)
