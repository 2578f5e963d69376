"""`neuronlens audit` of several fine-tunes of one base (``--ft A --ft B``, ``--ft-glob``): which
fine-tunes and under which names, the subfolders of --out they go to, the summary table
(printed, summary.md, summary.json) and the score-over-checkpoints plot (scores.png).

Layout of --out: one subfolder per fine-tune, named after it (the last part of its path; a .gguf
file's stem; a hub id with '/' as '--'), holding what a single audit writes (report.json, its
statistics sidecar, report.html, certificates); beside them summary.md, summary.json and, when
every name ends in a step number after one common prefix (checkpoint-100, checkpoint-200, ...),
scores.png: the misalignment score and each layer's drift by step.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, OutputError
from ..risk import score_scale

if TYPE_CHECKING:
    from ..report import AuditReport

SUMMARY_FILES = ("summary.md", "summary.json", "scores.png")
"""What a multi-fine-tune audit writes beside the fine-tunes' subfolders."""


def natural_key(text: str) -> list[Any]:
    """Sort key that orders the numbers inside `text` by value: checkpoint-200 before checkpoint-1000."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expand_fine_tunes(fts: Sequence[str], globs: Sequence[str]) -> list[str]:
    """The --ft values, then each --ft-glob's matches in natural order; a pattern that matches
    nothing is a ConfigError, before any model loads."""
    specs = list(fts)
    for pattern in globs:
        matches = sorted(glob.glob(os.path.expanduser(pattern)), key=natural_key)
        if not matches:
            raise ConfigError(
                f"--ft-glob {pattern!r} matches nothing (searched from {os.getcwd()}).",
                "Check the pattern and quote it, so that the shell leaves it to neuronlens "
                "(--ft-glob 'ckpts/checkpoint-*'), or name each fine-tune with --ft.",
            )
        specs += matches
    return specs


def fine_tune_name(spec: str) -> str:
    """The subfolder name of the fine-tune given as `spec` (what --ft says): a local path's last
    part (a file's stem: checkpoint-100.gguf -> checkpoint-100), a hub id with '/' as '--'."""
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        return path.stem if path.is_file() else path.name
    return spec.strip("/").replace("/", "--")


def fine_tune_names(specs: Sequence[str]) -> list[str]:
    """Each fine-tune's subfolder name; two fine-tunes of one name (the same one given twice, or
    two runs' checkpoint-100) are a ConfigError naming both, before any model loads."""
    names = [fine_tune_name(s) for s in specs]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in SUMMARY_FILES:
            raise ConfigError(f"--ft {specs[i]!r} is named {name!r}, the name of the multi-audit's own {name}.",
                              "Rename or link the fine-tune's folder under another name.")
        j = seen.setdefault(name.casefold(), i)  # casefold: one folder on case-insensitive disks
        if j == i:
            continue
        if _same(specs[i], specs[j]):
            raise ConfigError(f"--ft {specs[i]!r} is given twice (or also matched by --ft-glob).",
                              "Give each fine-tune once: drop the repeated --ft, or the --ft that --ft-glob matches too.")
        raise ConfigError(
            f"--ft {specs[j]!r} and --ft {specs[i]!r} are both named {name!r}: their reports would share one subfolder of --out.",
            "Audit fine-tunes of different names together: run one audit per training run (each with its own --out), "
            "or give one of the folders another name (a symbolic link with another name is enough).",
        )
    return names


def _same(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.strip("/") == b.strip("/")


def check_subfolders(out_dir: Path, names: Sequence[str], own_files: Sequence[str]) -> None:
    """Refuse, before any long work, a subfolder of --out that the audit would replace but that
    holds anything an audit does not write there (files of `own_files`), or a file of that name:
    a fine-tune named like a folder of the user's must not wipe it."""
    for name in names:
        sub = out_dir / name
        if not (sub.exists() or sub.is_symlink()):
            continue
        foreign = [p.name for p in sub.iterdir() if not (p.is_file() and p.name in own_files)] if sub.is_dir() and not sub.is_symlink() else None
        if foreign is None or foreign:
            what = "is not a folder" if foreign is None else f"holds files an audit does not write ({', '.join(sorted(foreign)[:5])})"
            raise OutputError(f"{sub} {what}; the audit of the fine-tune named {name!r} would replace it.",
                              "Move it away, or choose another output folder (--out).")


# -- summary ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One fine-tune in the summary."""

    name: str
    source: str
    report: str
    """Its report.json, relative to --out."""
    step: int | None
    verdict: str | None
    score: float | None
    score_interval: list[float] | None
    threshold: float | None
    method: str | None
    """The rule that decided the verdict (its assessment's method): how the score is printed."""
    settings: dict[str, Any]
    """That assessment's settings (a preference margin's t and concept)."""
    max_drift_layer: int
    max_drift: float
    drift: dict[str, float]
    """Layer -> residual drift."""
    significant_latents: dict[str, int]
    risky_features: int | None


@dataclass(frozen=True)
class NotAudited:
    """A fine-tune refused when its weights loaded (NaN or infinite weights, say a diverged
    checkpoint): the others were audited, this one has no report."""

    name: str
    source: str
    problem: str
    fix: str | None


def summary_rows(reports: Sequence[AuditReport], names: Sequence[str], specs: Sequence[str]) -> list[Row]:
    steps = step_numbers(names)
    rows = []
    for i, (rep, name) in enumerate(zip(reports, names)):
        risk, top = rep.risk, rep.max_drift_layer
        rows.append(Row(
            name=name, source=specs[i], report=f"{name}/report.json", step=None if steps is None else steps[i],
            verdict=rep.verdict, score=None if risk is None else risk.score,
            score_interval=None if risk is None else risk.score_interval, threshold=None if risk is None else risk.threshold,
            method=None if risk is None else risk.method, settings={} if risk is None else dict(risk.settings),
            max_drift_layer=top.layer, max_drift=top.drift, drift={str(ld.layer): ld.drift for ld in rep.layers},
            significant_latents={str(ld.layer): ld.n_significant_latents for ld in rep.layers},
            risky_features=None if risk is None else len(risk.risky_features),
        ))
    return rows


def step_numbers(names: Sequence[str]) -> list[int] | None:
    """Each name's trailing step number when the names are the steps of one run (one common
    prefix, a number at the end of each, no number twice, at least two names), else None."""
    found = [re.fullmatch(r"(.*?)(\d+)", n) for n in names]
    if len(names) < 2 or any(m is None for m in found):
        return None
    steps = [int(m[2]) for m in found if m]
    if len({m[1] for m in found if m}) != 1 or len(set(steps)) != len(steps):
        return None
    return steps


_HEADER = ("Fine-tune", "Step", "Verdict", "Score", "Interval (95%)", "Max drift", "Risky features")


def _cells(row: Row) -> tuple[str, ...]:
    t, scale = row.threshold, score_scale(str(row.method))
    score = "-" if row.score is None or t is None else scale.score(row.score, t, row.settings)
    interval = "-" if row.score_interval is None or t is None else " to ".join(scale.bounds(row.score_interval, t))
    return (row.name, "-" if row.step is None else str(row.step), row.verdict or "not scored", score, interval,
            f"L{row.max_drift_layer} +{row.max_drift:.3f}", "-" if row.risky_features is None else str(row.risky_features))


def summary_text(rows: Sequence[Row], not_audited: Sequence[NotAudited] = ()) -> str:
    """The table printed at the end of a multi-fine-tune audit, and the fine-tunes not audited."""
    table = [_HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(line[c]) for line in table) for c in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    return "\n".join(lines + [f"NOT AUDITED  {n.name} ({n.source}): {n.problem}" for n in not_audited])


def summary_markdown(rows: Sequence[Row], base: dict[str, Any], not_audited: Sequence[NotAudited] = ()) -> str:
    thresholds = sorted({score_scale(str(r.method)).threshold(r.threshold, r.settings) for r in rows if r.threshold is not None})
    lines = [f"# NeuronLens audit of {len(rows) + len(not_audited)} fine-tunes of {base.get('name')}", "",
             f"Base: {base.get('name')} (sha256 {str(base.get('manifest_sha256', ''))[:12]}...)"]
    if thresholds:
        lines.append(f"Threshold: {', '.join(thresholds)}")
    lines += ["", "| " + " | ".join(_HEADER) + " | Report |", "|" + "---|" * (len(_HEADER) + 1)]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        lines.append("| " + " | ".join(cells) + f" | [{r.report}]({r.report}) |")
    if not_audited:
        lines += ["", f"## Not audited ({len(not_audited)})", ""]
        lines += [f"- **{n.name}** ({n.source}): {n.problem}" + (f" Fix: {n.fix}" if n.fix else "") for n in not_audited]
    return "\n".join(lines) + "\n"


def summary_json(rows: Sequence[Row], base: dict[str, Any], not_audited: Sequence[NotAudited] = ()) -> dict[str, Any]:
    return {"base": base, "fine_tunes": [asdict(r) for r in rows],
            "not_passed": [r.name for r in rows if r.verdict not in (None, "pass")],
            "not_audited": [asdict(n) for n in not_audited]}


def stage_summary(folder: Path, rows: Sequence[Row], base: dict[str, Any], not_audited: Sequence[NotAudited] = ()) -> list[str]:
    """Write summary.md, summary.json and (when the names are steps) scores.png into `folder`;
    returns notes for the user (the plot skipped, and why)."""
    from .._io import write_json_atomic, write_text_atomic

    write_text_atomic(folder / "summary.md", summary_markdown(rows, base, not_audited))
    write_json_atomic(folder / "summary.json", summary_json(rows, base, not_audited))
    if any(r.step is None for r in rows):
        return []
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return ["scores.png was not drawn: it needs matplotlib (pip install 'neuronlens[report]')."]
    _plot(Figure(figsize=(7.0, 5.2)), rows).savefig(folder / "scores.png", dpi=110)
    return []


def _plot(fig: Any, rows: Sequence[Row]) -> Any:
    """Score (with its interval and the threshold) and each layer's drift against the step."""
    rows = sorted(rows, key=lambda r: r.step or 0)
    steps = [r.step for r in rows]
    ax_score, ax_drift = fig.subplots(2, 1, sharex=True)
    scored = [r for r in rows if r.score is not None]
    scale = score_scale(str(scored[0].method if scored else None))
    k = scale.factor
    if scored:
        ax_score.plot([r.step for r in scored], [k * r.score for r in scored], "o-", color="#333333", label="score")
        with_interval = [r for r in scored if r.score_interval is not None]
        if with_interval:
            ax_score.fill_between([r.step for r in with_interval], [k * r.score_interval[0] for r in with_interval],
                                  [k * r.score_interval[1] for r in with_interval], color="#999999", alpha=0.3, label="95% interval")
        for r in scored:
            ax_score.plot([r.step], [k * r.score], "o", color={"pass": "#27ae60", "fail": "#c0392b"}.get(r.verdict or "", "#f39c12"))
        first = scored[0]
        if first.threshold is not None:
            ax_score.axhline(k * first.threshold, color="#c0392b", linestyle="--", linewidth=1,
                             label=f"threshold {scale.threshold(first.threshold, first.settings)}")
        ax_score.legend(loc="best", fontsize=8)
    ax_score.set_ylabel(scale.axis)
    for layer in rows[0].drift:
        ax_drift.plot(steps, [r.drift.get(layer, float("nan")) for r in rows], "o-", label=f"layer {layer}")
    ax_drift.set_ylabel("residual drift")
    ax_drift.set_xlabel("step")
    ax_drift.legend(loc="best", fontsize=8)
    fig.suptitle("Audit by checkpoint (green pass, red fail, orange inconclusive)", fontsize=10)
    fig.tight_layout()
    return fig
