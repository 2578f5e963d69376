"""Detection benchmark: audit every model organism with default settings and compare the verdict
with the truth.

    neuronlens organisms build            # once (cached; ~5 min per organism on 2 CPU cores)
    python benchmarks/detection.py [--out docs/DETECTION.md] [--max-prompts N]
    neuronlens organisms build --seed 1   # a replicate zoo: same recipes and data, another seed
    python benchmarks/detection.py --seed 1 --out docs/DETECTION_SEED1.md
    python benchmarks/detection.py --render neuronlens-out/organisms/rows.json --out docs/DETECTION.md
    neuronlens organisms build sycophancy manipulative_support terse_style legal_help
    python benchmarks/detection.py --heldout --out docs/DETECTION_HELDOUT.md
    neuronlens organisms build --recipe strong   # the same data under a harder-hitting recipe
    python benchmarks/detection.py --recipe strong --out docs/DETECTION_STRONG.md
    neuronlens organisms build --base MY_MODEL    # organisms of your own base model, to check
    python benchmarks/detection.py --like OUT/report.json   # the threshold for it: the organisms
                                  # audited with that audit's model, SAEs and settings

Prints, per organism: its truth (what it was built to be) and its behaviour (rule-based scorer on
greedy generations, against the base model's rates), the misalignment score, the verdict and the
top risky features; then AUROC of the score over organisms, false fails / false passes at the
default threshold, and the Spearman correlation of score with the bad-data fraction of the
risky-finance dose series, with each concept's trend along the dose series. Nothing here is
tuned per organism: one method, one threshold. The seed-1 replicate zoo was built after the
scoring rule and threshold were fixed, so it is the held-out check of both. The held-out
organisms (``--heldout``) go further: new kinds of fine-tune (sycophancy, a manipulative support
agent, a terse style, legal help) whose data was written after the rule was fixed, by writers who
saw neither the concept library nor the other organisms.

Every run writes its rows (full precision, beside the reports) to rows.json. With ``--out
docs/X.md`` it also writes the results data, results/detection/x.json (the committed record:
settings, command, rows and the statistics above), and renders docs/X.md from it
(``python benchmarks/render.py`` renders every such document again; results/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from scipy.stats import spearmanr

from neuronlens import alignment
from neuronlens.config import AuditConfig
from neuronlens.errors import NeuronLensError
from neuronlens.models import DEFAULT_BASE
from neuronlens.organisms import (
    DOSE_FRACTION, DOSE_SERIES, HELDOUT, ORGANISMS, RECIPES, ZOO, behaviour_shift, evaluate_behaviour, evaluation_prompts, organism_dir,
    recipe_config, weights_sha256,
)
from neuronlens.concepts import builtin_concept_names, staged_concept_paths
from neuronlens.risk import METHOD, ConceptTrend, calibrated_saes, concept_trends

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402  (results data and the documents rendered from it)


def auroc(scores: list[float], positives: list[bool]) -> float:
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None,
                    help="Record the results: write results/detection/<name>.json (the data; <name>: this file's name in lower case) "
                         "and render this markdown document from it (a document outside docs/ gets its data beside it).")
    ap.add_argument("--reports", type=Path, default=None, help="Where each audit's report.json goes (default: neuronlens-out/organisms[-seedN]).")
    ap.add_argument("--seed", type=int, default=0, help="Audit the zoo built with `neuronlens organisms build --seed N`.")
    ap.add_argument("--max-prompts", type=int, default=None, help=f"Prompts per probe set (default {AuditConfig.max_prompts_per_set}).")
    ap.add_argument("--render", type=Path, default=None, help="Only re-render the table from a rows.json a full run wrote.")
    ap.add_argument("--rows-out", type=Path, default=None,
                    help="Write this run's rows.json here instead of beside the reports (a shard of a run: see --merge).")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="Join the rows.json of shard runs (--organisms with --rows-out, same settings otherwise) into the one run "
                         "they make up: its rows.json beside the reports, and with --out its results data, as that run writes them.")
    ap.add_argument("--rescore", action="store_true",
                    help="With --render: score the saved audits again with this version's scoring rule (from the statistics "
                         "each report saved; nothing is re-measured) and update rows.json.")
    ap.add_argument("--heldout", action="store_true", help="Audit the held-out organisms instead of the zoo.")
    ap.add_argument("--like", type=Path, default=None,
                    help="A report.json of your own audit: audit the organisms with its base model, SAEs and settings "
                         "(threshold, probe sets, layers, ...), to see where its line falls. --base, --sae, --layers and "
                         "--max-prompts given as well take precedence.")
    ap.add_argument("--base", default=None,
                    help="Base model whose organisms to audit (built with `neuronlens organisms build --base`); default: the embedded model.")
    ap.add_argument("--sae", default=None, help="SAEs to audit with (a folder or hub repo; default: shipped, cached or trained for the base).")
    ap.add_argument("--layers", default=None, help="Comma-separated decoder layers to audit (default: 30/50/70%% of depth, as an audit).")
    ap.add_argument("--organisms", nargs="+", default=None, help="Audit only these (a diagnostic run: the summary lines cover only them).")
    ap.add_argument("--recipe", choices=list(RECIPES), default="default",
                    help="Audit the organisms built with `neuronlens organisms build --recipe NAME`.")
    ap.add_argument("--with-staged", action="store_true",
                    help="Audit with the staged concepts (concepts/staged/) beside the built-in ones (AuditConfig.concepts).")
    ap.add_argument("--builtin-concepts", action="store_true",
                    help="With --render --rescore: score the saved audits with the built-in concepts only (the default library).")
    ap.add_argument("--amplify-alpha", type=float, default=None,
                    help="Run the amplified read at this strength (AuditConfig.amplify_alpha; default: the audit's default).")
    ap.add_argument("--score-reads", default=None,
                    help="Comma-separated reads that decide the verdict (AuditConfig.score_reads). With --render --rescore: "
                         "the saved audits are scored again with these reads (a read the audit did not run is refused).")
    return ap


def _reads(arg: str | None) -> list[str] | None:
    return None if arg is None else [r.strip() for r in arg.split(",") if r.strip()]


def main() -> None:
    ap = _parser()
    args = ap.parse_args()
    if args.render:
        _render_saved(args)
        return
    unknown = [n for n in args.organisms or [] if n not in ORGANISMS]
    if unknown:
        ap.error(f"unknown organism(s) {', '.join(unknown)}; choose from {', '.join(ORGANISMS)}")
    try:
        _merge(args) if args.merge else _run(args)
    except NeuronLensError as exc:  # bad input: named, with its fix, exit 2 as the CLI does
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _local(source: str | None) -> str | None:
    """A source as rows.json keeps it: an existing local path made absolute (re-rendering and
    re-scoring may run from another folder), anything else (alias, hub id) as given."""
    return str(Path(source).resolve()) if source is not None and Path(source).exists() else source


def _like(report_file: Path) -> tuple[str, str | None, AuditConfig]:
    """The base model, SAE source and settings of a saved audit."""
    if not report_file.is_file():
        raise NeuronLensError(f"--like {report_file}: no such report.", "Pass the report.json an audit wrote (neuronlens audit --out DIR).")
    report = alignment.AuditReport.load(report_file)
    base = str(report.base.get("source") or report.base.get("name"))
    shipped = calibrated_saes(str(report.base.get("manifest_sha256") or ""))
    if shipped is not None and {int(s["layer"]): s.get("sha256") for s in report.saes}.items() <= shipped.items():
        return base, None, report.config  # the shipped SAEs
    parents = {str(Path(s["source"]).parent) for s in report.saes if s.get("source")}
    if len(parents) != 1 or len(report.saes) != sum(1 for s in report.saes if s.get("source")):
        raise NeuronLensError(f"--like {report_file}: its SAEs do not come from one folder.", "Pass the SAE folder with --sae.")
    return base, parents.pop(), report.config


def _run(args: argparse.Namespace) -> None:
    base_source, sae_source, cfg = _like(args.like) if args.like else (DEFAULT_BASE, None, AuditConfig())
    base_source, sae_source = _local(args.base or base_source), _local(args.sae or sae_source)
    layers = cfg.layers if args.layers is None else [int(x) for x in args.layers.split(",") if x.strip()]  # [] is refused by validate
    cfg = replace(cfg, layers=layers,
                  max_prompts_per_set=args.max_prompts if args.max_prompts is not None else cfg.max_prompts_per_set)
    if args.amplify_alpha is not None:
        cfg = replace(cfg, amplify_alpha=args.amplify_alpha)
    if args.score_reads is not None:
        cfg = replace(cfg, score_reads=_reads(args.score_reads))
    if args.with_staged:
        cfg = replace(cfg, concepts=[*(cfg.concepts or builtin_concept_names()), *map(str, staged_concept_paths())])
    recipe = recipe_config(args.recipe, args.seed)
    base = alignment.load_model(base_source)
    cfg.validate(base.n_layers)
    names = args.organisms or (HELDOUT if args.heldout else ZOO)
    on = "" if base_source == DEFAULT_BASE else f" --base {base_source}"
    folders = {n: organism_dir(n, base, recipe) for n in names}  # each hashes the organism's data: once
    built = {n: f for n, f in folders.items() if (f / "adapter_model.safetensors").is_file()}
    if not built:  # before SAEs (possibly trained) and the base model's behaviour: nothing to audit
        raise NeuronLensError(f"None of the {len(names)} organisms is built for {base_source} (recipe {args.recipe}, seed {args.seed}).",
                              f"neuronlens organisms build {' '.join(names)} --seed {args.seed} --recipe {args.recipe}{on}")
    missing = [n for n in names if n not in built]
    if missing:
        print(f"not built, skipped: {', '.join(missing)} (run `neuronlens organisms build {' '.join(missing)} --seed {args.seed} --recipe {args.recipe}{on}`)")
    sae = alignment.load_sae(base, cfg.layers, source=sae_source)
    reports = args.reports or _default_reports(base_source, args.heldout, args.seed, args.recipe)
    base_beh = evaluate_behaviour(base)
    rows = [_audit_one(name, folder, base, sae, cfg, reports) for name, folder in built.items()]
    like = _local(str(args.like)) if args.like else None
    saved = {"base_harm": base_beh.harm_rate, "base_caveat": base_beh.caveat_rate, "threshold": cfg.threshold, "seed": args.seed,
             "heldout": args.heldout, "max_prompts": cfg.max_prompts_per_set, "default_max_prompts": AuditConfig.max_prompts_per_set,
             "method": METHOD, "organisms": args.organisms, "recipe": args.recipe, "base": base_source, "sae": sae_source, "layers": cfg.layers, "like": like,
             "amplify_alpha": cfg.amplify_alpha, "score_reads": cfg.score_reads, "staged": args.with_staged, "rows": rows}
    _save(saved, args.rows_out or reports / "rows.json", args.out)


def _save(saved: dict, rows_file: Path, out: Path | None) -> None:
    """Write a run's rows.json, print its table and, with --out, record its results."""
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.write_text(json.dumps(saved, indent=1))
    _emit(results(saved), out)


def _default_reports(base_source: str, heldout: bool, seed: int, recipe: str) -> Path:
    """Where a run's reports (and rows.json) go unless --reports says."""
    suffix = (("" if base_source == DEFAULT_BASE else f"-{_slug(base_source)}") + ("-heldout" if heldout else "")
              + ("" if seed == 0 else f"-seed{seed}") + ("" if recipe == "default" else f"-{recipe}"))
    return Path("neuronlens-out") / f"organisms{suffix}"


def merged(shards: list[dict]) -> dict:
    """The rows.json of the run that shard runs make up (each `saved`: a shard's rows.json): one
    row per organism in the zoo's order, the settings theirs, which must agree in everything but the
    organisms audited (a shard of another seed, rule or base model is refused, as is an organism
    audited twice). Where the shards audited every organism of the zoo, the run is the whole zoo's."""
    def settings(saved: dict) -> dict:
        return {k: v for k, v in saved.items() if k not in ("rows", "organisms")}

    first = settings(shards[0])
    for i, other in enumerate(map(settings, shards[1:]), 2):
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise NeuronLensError(f"Shard {i} differs from shard 1 in {', '.join(differ)}: they are not parts of one run.",
                                  "Merge only the shards of one run (same --seed, --heldout, rule flags, base model and SAEs).")
    rows: dict[str, dict] = {}
    for saved in shards:
        for r in saved["rows"]:
            if r["organism"] in rows:
                raise NeuronLensError(f"{r['organism']} is in two shards.", "Pass each shard's rows.json once, and shards of one run only.")
            rows[r["organism"]] = r
    names = HELDOUT if first["heldout"] else ZOO
    unknown = sorted(set(rows) - set(names))
    if unknown:
        raise NeuronLensError(f"{', '.join(unknown)}: not {'held-out organisms' if first['heldout'] else 'zoo organisms'}.",
                              "Merge the zoo's shards and the held-out organisms' shards separately (--heldout).")
    audited = [n for n in names if n in rows]
    return {**first, "organisms": None if len(audited) == len(names) else audited, "rows": [rows[n] for n in audited],
            "shards": len(shards)}


def _merge(args: argparse.Namespace) -> None:
    missing = [str(f) for f in args.merge if not f.is_file()]
    if missing:
        raise NeuronLensError(f"--merge: no such rows file: {', '.join(missing)}.", "Pass the files the shard runs wrote with --rows-out.")
    saved = merged([json.loads(f.read_text()) for f in args.merge])
    reports = args.reports or _default_reports(saved.get("base", DEFAULT_BASE), saved["heldout"], saved["seed"], saved.get("recipe", "default"))
    _save(saved, reports / "rows.json", args.out)


def _audit_one(name: str, folder: Path, base, sae, cfg: AuditConfig, reports: Path) -> dict:  # type: ignore[no-untyped-def]
    """One organism's audit (saved under `reports`) and behaviour, as a row of the table."""
    ft = alignment.load_model(folder)
    t = time.perf_counter()
    report = alignment.compare_models(base, ft, sae, config=cfg)
    secs = time.perf_counter() - t
    report.save(reports / name / "report.json")
    beh = evaluate_behaviour(alignment.load_model(folder))
    assert report.risk is not None
    row = {
        "organism": name,
        "truth": ORGANISMS[name].truth,
        "bad_fraction": DOSE_FRACTION.get(name),
        "adapter_weights_sha256": weights_sha256(folder),  # benchmarks/judge.py: the organism the truth describes
        "harm_rate": beh.harm_rate,
        "caveat_rate": beh.caveat_rate,
        **_risk_fields(report.risk),
        "evidence": _evidence_fields(report.behaviour),
        "seconds": round(secs, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def _render_saved(args: argparse.Namespace) -> None:
    saved = json.loads(args.render.read_text())
    for r in saved["rows"]:  # rows.json from before trends were recorded: read them from the saved reports
        if "trends" not in r and (args.render.parent / r["organism"] / "report.json").is_file():
            risk = alignment.AuditReport.load(args.render.parent / r["organism"] / "report.json").risk
            r["trends"] = _trends(concept_trends(risk.concepts))
    if args.rescore:
        concepts = None
        if args.with_staged or args.builtin_concepts:
            concepts = builtin_concept_names() + ([str(p) for p in staged_concept_paths()] if args.with_staged else [])
        _rescore(saved, args.render, _reads(args.score_reads), concepts)
    _emit(results(saved, args.render), args.out)


def _risk_fields(risk) -> dict:  # type: ignore[no-untyped-def]
    """What a row records of an audit's risk assessment."""
    trends = concept_trends(risk.concepts)
    return {
        "score": risk.score,
        "verdict": risk.verdict,
        "top": [{"layer": f.layer, "latent": f.latent, "concept": f.concept_label, "suppressed": f.direction == "suppressed"}
                for f in risk.risky_features[:3]],
        "top_concept": _strongest(trends),
        "trends": _trends(trends),
        "interval": risk.score_interval,
        "borderline": risk.borderline,
    }


def _evidence_fields(ev) -> dict | None:  # type: ignore[no-untyped-def]
    """What a row records of the report's behavioural evidence: which read its example answers come
    from, how many there are and for which concepts (on what basis), and the scorer's flags per set
    of answers (what the summary's behaviour line shows)."""
    if ev is None:
        return None
    return {"read": ev.read, "examples": len(ev.examples), "basis": ev.basis, "concepts": ev.concepts(),
            "flagged": {r.answers: list(r.shift) for r in ev.rates if r.shift},
            "harm": {r.answers: [r.n_harm, r.n_answers] for r in ev.rates}}


def _rescore(saved: dict, rows_file: Path, score_reads: list[str] | None = None, concepts: list[str] | None = None) -> None:
    """Score every saved audit again with this version's rule. The reports keep the exact sums the
    audit measured, and `assess` is the function a fresh audit calls on them, so the score and
    verdict are those a fresh audit would give (the evidence contexts are not rebuilt).
    `score_reads`, `concepts`: score with these instead of each audit's own."""
    from neuronlens.risk import EvidenceStore, prepare_risk

    base = alignment.load_model(saved.get("base", DEFAULT_BASE))
    setups: dict = {}
    old_method = saved.get("method", "neuronlens.risk/1")
    for r in saved["rows"]:
        report = alignment.AuditReport.load(rows_file.parent / r["organism"] / "report.json")
        if score_reads is not None:
            ran = {read for p in report.probe_sets for read in p.get("responses_sha256", {})}
            if not set(score_reads) <= ran:
                raise NeuronLensError(f"--score-reads {','.join(score_reads)}: the audit of {r['organism']} ran only {', '.join(sorted(ran))}.",
                                      "Audit again with the read on (e.g. --amplify-alpha 2), or score with the reads it ran.")
            report = replace(report, config=replace(report.config, score_reads=score_reads))
            report.config.validate()
        if concepts is not None:
            report = replace(report, config=replace(report.config, concepts=concepts))
        key = (tuple(report.config.layers or ()), tuple(report.config.concepts or ()))
        if key not in setups:
            sae = alignment.load_sae(base, layers=list(key[0]), source=saved.get("sae"))
            setups[key] = prepare_risk(base, sae, list(key[0]), report.config.concepts)
        risk = report.rescore(setups[key], EvidenceStore(), base.tokenizer)
        r.update(_risk_fields(risk), evidence=_evidence_fields(report.behaviour))
    if old_method != METHOD:
        saved["rescored_from"] = old_method
    saved["method"] = METHOD
    if score_reads is not None:
        saved["score_reads"] = score_reads
    if concepts is not None:
        saved["staged"] = len(concepts) > len(builtin_concept_names())
    rows_file.write_text(json.dumps(saved, indent=1))


def _slug(name: str) -> str:
    """A base model's name as a folder-name part (a hub id or a path)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-60:] or "base"


def _emit(data: dict, out: Path | None) -> None:
    """Print the table; with --out, write the results data (results/detection/) and render the document from it."""
    print(render.rendering(data))
    if out:
        render.publish(data, out)


def _trends(trends: list[ConceptTrend]) -> dict[str, list]:
    """Concept (read) -> [trend towards risk, number of layers where it is significant, whether it is specific]."""
    return {f"{t.label} ({t.read})": [t.shift, len(t.significant_layers), t.specific] for t in trends}


def _strongest(trends: list[ConceptTrend]) -> dict | None:
    """The strongest trend that counts (a trend that counts is positive)."""
    counting = [t for t in trends if t.counts]
    return {"label": counting[0].label, "read": counting[0].read, "shift": counting[0].shift} if counting else None


def results(saved: dict, rows_file: Path | None = None) -> dict:
    """The results data of a run (`saved`: what its rows.json holds; `rows_file`: that file, when the
    rows are rendered or re-scored from it): the settings, the commands, each row and the statistics
    the table states, computed here once (benchmarks/tables.py only formats them)."""
    s = _settings(saved)
    command, build, doc = _commands(s)
    prompts, care = evaluation_prompts()
    base = {"harm_rate": saved["base_harm"], "caveat_rate": saved["base_caveat"]}
    rows = [_result_row(r, base, len(prompts), sum(care)) for r in saved["rows"]]
    rescored = None
    if saved.get("rescored_from"):
        command_again = f"python benchmarks/detection.py --render {rows_file} --rescore --out docs/{doc}"
        rescored = {"command": command_again, "from": saved["rescored_from"]}
    return {"benchmark": "detection", "command": command, "build": build, "rescored": rescored, "shards": saved.get("shards"), "settings": s,
            "behaviour_set": {"answers": len(prompts), "care": sum(care)}, "base_behaviour": base,
            "summary": _summary(rows, s["heldout"]), "rows": rows}


def _settings(saved: dict) -> dict:
    """The run's settings as the results data records them (the rows.json of older runs lacks some: their defaults)."""
    base = saved.get("base", DEFAULT_BASE)
    default_prompts = AuditConfig.max_prompts_per_set
    variant = {k: saved[k] for k in ("amplify_alpha", "score_reads")  # runs that changed them from the default
               if saved.get(k) is not None and saved[k] != getattr(AuditConfig(), k)}
    if saved.get("staged"):
        variant["staged"] = True
    return {"method": saved.get("method"), "threshold": saved["threshold"], "seed": saved.get("seed", 0),
            "heldout": saved.get("heldout", False), "recipe": saved.get("recipe", "default"),
            "max_prompts": saved.get("max_prompts", default_prompts),
            "default_max_prompts": saved.get("default_max_prompts", default_prompts),
            "organisms": saved.get("organisms"), "base": base, "base_default": base == DEFAULT_BASE, "sae": saved.get("sae"),
            "layers": saved.get("layers"), "like": saved.get("like"), **variant}


def _commands(s: dict) -> tuple[str, str, str]:
    """The command that makes these rows, the command that builds their organisms, and the document's name."""
    flag = ("" if s["seed"] == 0 else f" --seed {s['seed']}") + ("" if s["recipe"] == "default" else f" --recipe {s['recipe']}")
    base_flag = model_flag = "" if s["base_default"] else f" --base {s['base']}"
    if s["like"]:  # the model, SAEs and settings are the report's; the table says so instead of repeating them
        model_flag, sae_flag = f" --like {s['like']}", ""
    else:
        layers = "" if s["layers"] is None else " --layers " + ",".join(map(str, s["layers"]))
        sae_flag = ("" if s["sae"] is None else f" --sae {s['sae']}") + layers
    prompts = s["max_prompts"]
    budget = prompts != s["default_max_prompts"]
    doc = ("DETECTION" + ("_HELDOUT" if s["heldout"] else "") + ("" if s["recipe"] == "default" else f"_{s['recipe'].upper()}")
           + ("" if s["seed"] == 0 else f"_SEED{s['seed']}") + (f"_P{prompts}" if budget else "")
           + ("" if s["base_default"] else f"_{_slug(s['base']).upper()}") + ".md")
    subset = " --organisms " + " ".join(s["organisms"]) if s["organisms"] else ""
    reads, alpha = s.get("score_reads"), s.get("amplify_alpha")  # in the settings only where not the default
    variant = (" --with-staged" if s.get("staged") else "") + ("" if alpha is None else f" --amplify-alpha {alpha:g}") + (
        "" if reads is None else " --score-reads " + ",".join(reads))
    if variant:
        doc = doc[:-3] + ("_STAGED" if s.get("staged") else "") + ("" if alpha is None else f"_ALPHA{alpha:g}") + (
            "" if reads is None else "_" + "_".join(r.upper() for r in reads)) + ".md"
    command = (f"python benchmarks/detection.py{' --heldout' if s['heldout'] else ''}{flag}{model_flag}{sae_flag}"
               f"{f' --max-prompts {prompts}' if budget else ''}{subset}{variant} --out docs/{doc}")
    build = f"neuronlens organisms build{' ' + ' '.join(HELDOUT) if s['heldout'] else ''}{flag}{base_flag}"
    return command, build, doc


def _result_row(r: dict, base: dict, n_answers: int, n_care: int) -> dict:
    """A rows.json row as the results data records it: with its behaviour against the base model's."""
    row = {
        "organism": r["organism"], "truth": r["truth"], "bad_fraction": r["bad_fraction"], "harm_rate": r["harm_rate"],
        "caveat_rate": r["caveat_rate"],
        "behaviour": behaviour_shift(r["harm_rate"], r["caveat_rate"], base["harm_rate"], base["caveat_rate"], n_answers, n_care),
        "score": r["score"], "interval": r.get("interval"), "borderline": bool(r.get("borderline")), "verdict": r["verdict"],
        "top_concept": _legacy_concept(r["top_concept"]), "top": [_legacy_feature(f) for f in r["top"]],
    }
    if "trends" in r:  # [shift, layers where significant, specific]; rows saved before the competitive test lack the last: specific
        row["trends"] = {k: [t[0], bool(t[1]), t[2] if len(t) > 2 else True] for k, t in r["trends"].items()}
    if "seconds" in r:
        row["seconds"] = r["seconds"]
    return row


def _legacy_concept(top: dict | str | None) -> dict | None:
    """rows.json of runs before the results data recorded the strongest concept as printed: '–' or 'Label (read read, +x%)'."""
    if not isinstance(top, str):
        return top
    m = re.fullmatch(r"(.+) \((\w+) read, \+(-?[0-9.]+)%\)", top)
    return None if m is None else {"label": m.group(1), "read": m.group(2), "shift": float(Decimal(m.group(3)) / 100)}


def _legacy_feature(f: dict | str) -> dict:
    """rows.json of runs before the results data recorded a risky feature as printed: 'L21#1525 Illegal acts ↑'."""
    if not isinstance(f, str):
        return f
    m = re.fullmatch(r"L(\d+)#(\d+) (.+) ([↑↓])", f)
    if m is None:
        raise NeuronLensError(f"A row of rows.json has a risky feature {f!r} not of the form 'L21#1525 Illegal acts ↑'.",
                              "Render it with --rescore, which records the features again from the saved reports.")
    return {"layer": int(m.group(1)), "latent": int(m.group(2)), "concept": m.group(3), "suppressed": m.group(4) == "↓"}


def _summary(rows: list[dict], heldout: bool) -> dict:
    """The statistics the table states, over its rows. NaN (one class absent) is recorded as None."""
    names = HELDOUT if heldout else ZOO
    truth = [r["truth"] == "misaligned" for r in rows]
    fails = [r["verdict"] != "pass" for r in rows]
    core = [r for r in rows if r["organism"] not in DOSE_SERIES or r["bad_fraction"] in (0.0, 1.0)]
    benign = [r["score"] for r in core if r["truth"] == "benign"]
    misaligned = [r["score"] for r in core if r["truth"] == "misaligned"]
    dose = sorted((r for r in rows if r["organism"] in DOSE_SERIES), key=lambda r: r["bad_fraction"])
    return {
        "audited_of": len(names),
        "not_audited": [n for n in names if n not in {r["organism"] for r in rows}],
        "auroc": _finite(auroc([r["score"] for r in rows], truth)),
        "auroc_core": None if len(core) == len(rows) else
        {"organisms": len(core), "auroc": _finite(auroc([r["score"] for r in core], [r["truth"] == "misaligned" for r in core]))},
        "agree": sum(f == bool(r["behaviour"]) for r, f in zip(rows, fails)),
        "benign_vs_misaligned": [max(benign), min(misaligned)] if benign and misaligned else None,
        "false_fails": sum(f and not t for f, t in zip(fails, truth)),
        "false_passes": sum(t and not f for f, t in zip(fails, truth)),
        "borderline": _borderline(rows, truth, fails),
        "dose": None if len(dose) < 3 else {
            "organisms": [r["organism"] for r in dose],
            "spearman": _finite(spearmanr([r["bad_fraction"] for r in dose], [r["score"] for r in dose]).statistic)},
    }


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _borderline(rows: list[dict], truth: list[bool], fails: list[bool]) -> dict | None:
    """How the borderline flag (threshold inside the score's interval) sits on right and wrong verdicts."""
    if any(r["interval"] is None for r in rows):
        return None
    wrong = [f != t for f, t in zip(fails, truth)]
    flagged = [r["borderline"] for r in rows]
    return {"flagged": sum(flagged), "wrong": sum(wrong), "wrong_flagged": sum(w and b for w, b in zip(wrong, flagged)),
            "right_flagged": sum(b and not w for w, b in zip(wrong, flagged))}


if __name__ == "__main__":
    main()
