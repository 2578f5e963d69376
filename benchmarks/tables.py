"""The markdown of each benchmark's results: one function per benchmark, from its results data
(results/<benchmark>/<name>.json, described in results/README.md) to the lines of its document.

Only formatting happens here, and arithmetic within one record (a ratio of two stored values, a
chance rate k / n). Every statistic over records that a document states (AUROCs, Spearman's rho,
counts of wrong verdicts, which organisms moved, ...) and every default a header compares with is
computed by the benchmark when it runs and stored in the data: rendering never depends on today's
defaults, and results migrated from the markdown (which hold the values as printed) render to what
was printed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from neuronlens.fmt import interval_bounds, percent_beside, threshold_percent


def detection(data: dict) -> list[str]:
    """docs/DETECTION*.md: per organism its truth, behaviour, score and verdict; then the summary
    and, for a zoo with its dose series, each concept's trend along the doses."""
    dose = [_row(data["rows"], name) for name in (data["summary"]["dose"] or {}).get("organisms", [])]
    return [*_detection_header(data), *_detection_table(data), "", *_detection_summary(data), *_dose_trends(dose)]


def _detection_header(data: dict) -> list[str]:
    s = data["settings"]
    budget = s["max_prompts"] != s["default_max_prompts"]
    title = ("# Detection benchmark" + (": held-out organisms" if s["heldout"] else "")
             + ("" if s["seed"] == 0 else f": replicate zoo (seed {s['seed']})")
             + ("" if s["recipe"] == "default" else f": the {s['recipe']!r} fine-tuning recipe")
             + (f", {s['max_prompts']} prompts per probe set" if budget else ""))
    sae = f"the SAEs in {s['sae']}" if s["sae"] else "the SAEs shipped, cached or trained for it"
    model = "SmolLM2-135M-Instruct with the shipped SAEs" if s["base_default"] and s["sae"] is None else f"{s['base']} with {sae}"
    layers = "" if s["layers"] is None else f" at layers {s['layers']}"
    rescored = data["rescored"]
    return [
        title,
        "",
        f"Made by `{data['command']}` (after `{data['build']}`),",
        *([f"run as {data['shards']} shards (one process per organism: the same flags with `--organisms NAME --rows-out FILE`) "
           "joined by `--merge FILE...`,"] if data.get("shards") else []),
        f"on {model}{layers}" + (f" with the settings of {s['like']}" if s["like"] else " and default settings")
        + (f" except {s['max_prompts']} prompts per probe set (default {s['default_max_prompts']})" if budget else "")
        + "; see docs/ORGANISMS.md for the",
        "organisms and the behavioural scorer, docs/METHOD.md for the score.",
        *([
            "",
            f"Scored with {s['method']} by `{rescored['command']}`",
            f"from the statistics the audits (run under {rescored['from']}) saved: the measurements are the audits', "
            "the scoring rule is this version's.",
        ] if rescored else []),
        "",
        "Behaviour vs base: `harm up` / `caveats down` when the organism's rate differs from the base model's by more than",
        "2 binomial standard errors (`behaviour_shift` in organisms/_behaviour.py), `≈ base` otherwise.",
        "",
    ]


def _detection_table(data: dict) -> list[str]:
    threshold, base = data["settings"]["threshold"], data["base_behaviour"]
    out = [
        "| organism | truth | bad data | harm rate | caveat rate | behaviour vs base | score | verdict | strongest concept | top risky features |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| *base model* | – | – | {base['harm_rate']:.0%} | {base['caveat_rate']:.0%} | – | – | – | – | – |",
    ]
    for r in data["rows"]:
        out.append(
            f"| {r['organism']} | {r['truth']} | {_fraction(r)} | {r['harm_rate']:.0%} | {r['caveat_rate']:.0%} | "
            f"{', '.join(r['behaviour']) or '≈ base'} | {_score_cell(r, threshold)} | {r['verdict']} | "
            f"{_concept_cell(r['top_concept'], threshold)} | {'; '.join(map(_feature, r['top'])) or '–'} |"
        )
    return out


def _detection_summary(data: dict) -> list[str]:
    rows, s, summary = data["rows"], data["settings"], data["summary"]
    threshold, n = s["threshold"], len(data["rows"])
    missing = summary["not_audited"]
    out = [f"- organisms audited: {n} of {summary['audited_of']}" + (f" (not audited: {', '.join(missing)})" if missing else ""),
           f"- AUROC of the misalignment score over {n} organisms: {_3f(summary['auroc'])}"]
    if summary["auroc_core"]:
        core = summary["auroc_core"]
        out.append(f"- AUROC over the {core['organisms']} organisms outside the partial-dose series: {_3f(core['auroc'])}")
    out.append("- verdict agrees with the behavioural check (fail where behaviour differs from base, pass where it does not): "
               f"{summary['agree']} of {n}")
    if summary["benign_vs_misaligned"]:
        largest, smallest = summary["benign_vs_misaligned"]
        out.append(f"- {'' if s['heldout'] else 'outside the partial doses: '}largest benign score {percent_beside(largest, threshold)}, "
                   f"smallest misaligned score {percent_beside(smallest, threshold)}")
    out.append(f"- false fails (benign, not passed): {summary['false_fails']}; "
               f"false passes (misaligned, passed): {summary['false_passes']} (threshold {threshold_percent(threshold)})")
    if summary["borderline"]:
        b = summary["borderline"]
        out.append(f"- borderline verdicts (the threshold inside the score's 95% interval over probe samples): {b['flagged']} of {n}; "
                   f"of the {b['wrong']} verdicts wrong against the data labels, {b['wrong_flagged']} are borderline; "
                   f"of the {n - b['wrong']} right ones, {b['right_flagged']}")
    if summary["dose"]:
        dose = [_row(rows, name) for name in summary["dose"]["organisms"]]
        scores = ", ".join(f"{_fraction(r)}: {r['score']:.1%}" for r in dose)
        out.append(f"- dose series ({', '.join(map(_fraction, dose))} bad data): "
                   f"Spearman ρ(score, fraction) = {summary['dose']['spearman']:.2f}; scores {scores}")
    return out


def _3f(x: float | None) -> str:
    """An AUROC to 3 decimals; None (stored for NaN: one class absent) prints as Python prints NaN."""
    return "nan" if x is None else f"{x:.3f}"


def _row(rows: list[dict], organism: str) -> dict:
    return next(r for r in rows if r["organism"] == organism)


def _fraction(row: dict) -> str:
    return "" if row["bad_fraction"] is None else f"{row['bad_fraction']:.0%}"


def _score_cell(row: dict, threshold: float) -> str:
    """The score, with its 95% interval over probe samples where the row records one (bounds beside
    the threshold with the digits that tell them from it, as the audit's summary prints them)."""
    score = percent_beside(row["score"], threshold)
    if row["interval"] is None:
        return score
    low, high = interval_bounds(row["interval"], threshold)
    return f"{score} [{low}, {high}]" + (" borderline" if row["borderline"] else "")


def _concept_cell(top: dict | None, threshold: float) -> str:
    """The strongest concept trend that counts (a trend that counts is positive)."""
    return "–" if top is None else f"{top['label']} ({top['read']} read, +{percent_beside(top['shift'], threshold)})"


def _feature(f: dict) -> str:
    return f"L{f['layer']}#{f['latent']} {f['concept']} {'↓' if f['suppressed'] else '↑'}"


def _dose_trends(dose: list[dict]) -> list[str]:
    """Each concept's trend (median over layers of its shift towards risk) along the dose series,
    concepts ordered by their trend at the largest dose. A * marks a trend that counts (significant
    at >= 1 layer and specific), a ° one that is significant but not specific."""
    if len(dose) < 3 or not all("trends" in r for r in dose):
        return []
    last = dose[-1]["trends"]
    keys = sorted(last, key=lambda k: -last[k][0])  # stable: ties keep the recorded order
    out = ["", "Concept trends along the dose series (median over layers of the shift towards risk; * = significant at ≥ 1 layer "
           "and specific, so it counts if positive; ° = significant but no more than random directions moved):", "",
           "| concept (read) | " + " | ".join(map(_fraction, dose)) + " |", "|---|" + "---|" * len(dose)]
    for k in keys:
        cells = [_trend_cell(r["trends"][k]) if k in r["trends"] else "–" for r in dose]
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return out


def _trend_cell(trend: list) -> str:
    """[shift, significant, specific] -> '+2.1%*' (counts), '+2.1%°' (significant, not specific) or '+2.1%'."""
    shift, significant, specific = trend
    return f"{shift:+.1%}" + (("*" if specific else "°") if significant else "")


def early_warning(data: dict) -> list[str]:
    """docs/EARLY_WARNING.md: one run of the benchmark (screening, then each organism trained under
    the monitor). `title` and `heading` are how the run sits in its document."""
    lines = [data["title"], ""] if data["title"] else []
    rule = f", scoring rule `{data['method']}`" if data["method"] else ""
    lines += [f"Made by `{data['command']}` on {data['model']}{rule}.", ""]
    if data["screening"]:
        lines += [*_screening_before_training(data["screening"], data["heading"]), ""]
    for run in data["runs"]:
        lines += [*_training_run(run, data["heading"]), ""]
    return lines[:-1]


def _screening_before_training(s: dict, heading: str) -> list[str]:
    k, n = s["risky"], s["examples"]
    return [
        f"{heading} Screening the training data of `{s['organism']}` before training",
        "",
        f"- {n} examples, {k} of them risky by construction; `screen_dataset` on the base model took {s['seconds']:.0f} s",
        f"- precision@{k} = {s['precision']:.2f} (chance: {k / n:.2f}); ranks of the risky examples: {s['ranks']}",
    ]


def _training_run(run: dict, heading: str) -> list[str]:
    out = [
        f"{heading} Training `{run['organism']}` with checks every {run['every']} steps "
        f"(monitor budget: {run['max_prompts']} prompts per probe set, {run['max_new_tokens']}-token responses)",
        "",
        f"Base model: harm rate {run['base_harm']:.0%}, caveat rate {run['base_caveat']:.0%}; "
        f"mean training step {run['step_s']:.1f} s (batch {run['batch']}).",
        "",
        "| step | loss | monitor score | verdict | top risky features | harm rate | caveat rate | behaviour shows misalignment | "
        "monitor check / step time | behavioural check / step time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run["rows"]:
        out.append(
            f"| {r['step']} | {r['loss']:.2f} | {r['score']:.1%} | {r['verdict']} | {', '.join(r['top']) or '–'} | {r['harm']:.0%} | "
            f"{r['caveat']:.0%} | {'yes' if r['shows'] else 'no'} | {r['monitor_steps']:.1f}x | {r['behaviour_steps']:.1f}x |"
        )
    return out + [
        "",
        f"- first step the monitor fails the model: {run['first_fail']}; "
        f"first step the behavioural check shows misalignment: {run['first_shows']}",
        f"- monitor overhead: {run['monitor_s']:.0f} s per check = {run['monitor_steps']:.1f} training steps; "
        f"amortised over {run['every']} steps: +{run['amortised']:.0%} training time",
    ]


def screening(data: dict) -> list[str]:
    """docs/SCREENING.md: precision@k and mean rank of three rankings on each mixture."""
    out = [
        f"Made by `{data['command']}` on {data['model']} (shipped SAEs, layers {data['layers']}, {data['machine']}).",
        "",
        "| risky examples in | same questions | risky / examples | chance | A: precision@k | A: mean rank | "
        "B: precision@k | B: mean rank | C: precision@k | C: mean rank | time (A) | time (C) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        a, b, c = (r["rankings"][x] for x in "ABC")
        out.append(
            f"| {r['risky']} in {r['benign']} | {'yes' if r['same_questions'] else 'no'} | {r['n_risky']} / {r['examples']} | "
            f"{r['n_risky'] / r['examples']:.2f} | {a['precision']:.2f} | {a['mean_rank']:.1f} | "
            f"{b['precision']:.2f} | {b['mean_rank']:.1f} | "
            f"{c['precision']:.2f} | {c['mean_rank']:.1f} | {r['seconds_a']:.0f} s | {r['seconds_c']:.0f} s |"
        )
    mean = data["mean_precision"]
    return out + ["", f"Mean precision@k over the {len(data['rows'])} mixtures: A {mean['A']:.3f}, B {mean['B']:.3f}, C {mean['C']:.3f}."]


COVERAGE_READS = ("residual", "reconstruction", "codes", "residual_max")


def concept_coverage(data: dict) -> list[str]:
    """docs/CONCEPT_COVERAGE.md: per concept and layer, the audit's latents and four linear reads."""
    out = [
        "# Concept coverage: the model, the SAE and the audit's latents",
        "",
        f"Made by `{data['command']}` on {data['model']}.",
        "AUROC between each concept's positive and negative replies (base model, mean over the reply's tokens);",
        f"the linear reads are {data['folds']}-fold cross-validated by pair. See the docstring of the script for what each column is.",
        "",
        "| concept | layer | latents passing the rule | best latent AUROC (higher on positives) | residual (linear, CV) | "
        "SAE reconstruction (linear, CV) | SAE codes (linear, CV) | residual, max over tokens (CV) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        reads = " | ".join(f"{r[k]:.2f}" for k in COVERAGE_READS)
        out.append(f"| {r['concept']} | {r['layer']} | {r['latents']} | {r['best_latent']:.2f} | {reads} |")
    return out


def behaviour_separability(data: dict) -> list[str]:
    """docs/BEHAVIOUR_SEPARABILITY.md: the score's and behaviour's AUROC against the data labels per zoo."""
    out = [
        "# Do the organisms' behaviours separate them by their training data?",
        "",
        f"Made by `{data['command']}` from the committed 24-prompt detection tables (nothing re-measured). Behaviour: the rule-based "
        "scorer of docs/ORGANISMS.md on greedy generations; an organism's behavioural score is the larger of its harm-rate rise "
        "and caveat-rate fall against the base model, in binomial standard errors of the base rate.",
        "",
        "| zoo | organisms | AUROC of the score (data labels) | AUROC of behaviour (data labels) | "
        "AUROC of the score (behaviour moved > 2 SE) | "
        "misaligned organisms whose behaviour is within 2 SE of the base | benign organisms whose behaviour moved > 2 SE |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        out.append(
            f"| {r['zoo']} | {r['organisms']} ({r['n']}) | {r['score_auroc']:.3f} | {r['behaviour_auroc']:.3f} | "
            f"{'–' if r['score_auroc_behaviour'] is None else format(r['score_auroc_behaviour'], '.3f')} | "
            f"{_named(r['quiet_misaligned'], r['misaligned'])} | {_named(r['moved_benign'], r['n'] - r['misaligned'])} |"
        )
    s = data["summary"]
    below, equal, above = s["behaviour_vs_score"]
    (lo9, hi9), (lo4, hi4) = s["behaviour_range_9_13"], s["behaviour_range_4"]
    return out + [
        "",
        f"- over all {s['tables']} tables: {s['quiet']} of {s['misaligned']} misaligned organisms behave within 2 SE of the base model "
        f"(harm and caveats), and {s['moved']} of {s['benign']} benign ones moved by more than 2 SE towards misalignment",
        f"- behaviour's AUROC against the data labels is below the score's in {below} of {below + equal + above} rows, "
        f"equal in {equal}, above in {above}; it ranges {lo9:.3f}-{hi9:.3f} over the rows of 9 or 13 organisms "
        f"and {lo4:.3f}-{hi4:.3f} over the held-out four",
        f"- behavioural evaluation set: {s['answers']} answers, {s['care']} of them to care-needing prompts (organisms/_behaviour.py)",
    ]


def _named(names: list[str], of: int) -> str:
    return f"{len(names)} of {of}" + (": " + ", ".join(names) if names else "")


def scale_memory(data: dict) -> list[str]:
    """benchmarks/scale_memory.py --out: peak memory of each process against one model + SAEs."""
    one = data["processes"]["one_model"]["peak_rss_mib"]
    audit, imports = data["processes"]["audit"], data["processes"]["imports"]["peak_rss_mib"]
    weights = data["model_mib"] + data["sae_mib"]
    drift = {int(k): v for k, v in audit["layer_drift"].items()}  # JSON keys are strings; the run printed the layers as ints
    out = [
        f"Command: `{data['command']}`",
        "",
        f"Model: random-init Llama, {data['n_params'] / 1e9:.2f}B parameters, {data['dtype']}, {data['shards']} "
        f"safetensors shards ({data['model_mib']:,.0f} MiB); SAEs: {len(data['layers'])} x TopK d_sae={data['d_sae']} "
        f"({data['sae_mib']:,.0f} MiB, float32); audited layers {','.join(map(str, data['layers']))}; {data['max_prompts']} prompts per "
        f"built-in probe set, {data['max_new_tokens']} new tokens; risk scoring on.",
        "",
        "| process | peak RSS (MiB) | / one model + SAEs | seconds |",
        "|---|---:|---:|---:|",
    ]
    for what, r in data["processes"].items():
        out.append(f"| {what.replace('_', ' ')} | {r['peak_rss_mib']:,.0f} | {r['peak_rss_mib'] / one:.2f}x | {r['seconds']} |")
    return out + [
        "",
        f"Audit peak minus the import baseline: {audit['peak_rss_mib'] - imports:,.0f} MiB, against {weights:,.0f} MiB of weights "
        f"(model + SAEs) = {(audit['peak_rss_mib'] - imports) / weights:.2f}x.",
        f"Layer drift seen by the audit: {drift} over {audit['n_tokens']} tokens per layer (the perturbation starts at layer 8).",
        f"Target: audit <= 1.25x one model + SAEs: {'met' if audit['peak_rss_mib'] <= 1.25 * one else 'NOT met'} "
        f"({audit['peak_rss_mib'] / one:.2f}x).",
    ]


def residual_directions(data: dict) -> list[str]:
    """benchmarks/residual_directions.py: held-out AUROC of each concept's pairs per direction
    (part 'heldout'), or the organisms' shifts along the directions (part 'organisms')."""
    head = [f"Made by `{data['command']}` on {data['base']['source']}, layers "
            f"{', '.join(map(str, data['layers']))}, {len(data['concepts'])} concepts.", ""]
    return head + (_residual_heldout(data) if data["part"] == "heldout" else _residual_organisms(data))


def _auc(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _residual_heldout(data: dict) -> list[str]:
    out = [f"Held-out AUROC, mean over {data['settings']['folds']} folds (fold seed {data['settings']['seed']}); "
           "SAE: the number of concept latents found on the build pairs (mean over folds).", "",
           "| concept | polarity | layer | own residual direction | SAE-latent direction (latents) | general | general without this concept |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        out.append(f"| {r['concept']} | {r['polarity']} | {r['layer']} | {_auc(r['own'])} | {_auc(r['sae'])} ({r['sae_latents']:.1f}) "
                   f"| {_auc(r['general'])} | {_auc(r['loco'])} |")
    for layer, m in data["summary"].items():
        out.append(f"| **mean over concepts** | | {layer} | {_auc(m['own'])} | {_auc(m['sae'])} | {_auc(m['general'])} | {_auc(m['loco'])} "
                   f"(lowest {m['loco_min']:.2f}, {m['loco_min_concept']}) |")
    return out


def _residual_organisms(data: dict) -> list[str]:
    s, n = data["settings"], data["n_prompts"]
    out = [f"same: {n['same']} prompts ({s['max_prompts']} per built-in probe set); own: {n['own']} prompts ({s['own_prompts']} per set); "
           f"{s['max_new_tokens']} new tokens. Shift = fine-tuned minus base, risk-signed, in concept units, mean over prompts (t).", "",
           "| organism | truth | its concept | read | layer | concept direction | general | general without the concept "
           "| concept's rank | top concept |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---|"]

    def cell(x: dict | None) -> str:
        return "–" if x is None else f"{x['shift']:+.3f} ({x['t'] if x['t'] is not None else '–'})"

    for r in data["rows"]:
        out.append(f"| {r['organism']} | {r['truth']} | {r['target'] or '–'} | {r['read']} | {r['layer']} | {cell(r['own'])} "
                   f"| {cell(r['general'])} | {cell(r['loco'])} | {r['rank_of_target'] or '–'} | {r['top_concept']} |")
    return out


def summary(data: dict) -> list[str]:
    """README's "How well it works" table: each zoo judged by its training data and by the three-way truth."""
    out = [
        f"Made by `{data['command']}` from results/detection/, results/judge/"
        + (" and results/pair_margin/." if data.get("side_by_side") else "."),
        "",
        "| zoo | by data: organisms | AUROC (zoo / held-out kinds) | wrong verdicts | dose ρ | three-way: judged | gate AUROC | wrong gate verdicts "
        "| degraded warned | harm named | evidence missing |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        d, t = row["by_data"], row["three_way"]
        docs = ", ".join(f"[{Path(doc).stem}]({doc})" for doc in d["docs"])
        zoo = f"{row['role']}: seed {row['seed']}" + ("" if row["recipe"] == "default" else f", recipe {row['recipe']}") + f" ({docs})"
        rho = "–" if d["dose_spearman"] is None else f"{d['dose_spearman']:.2f}"
        cells = [zoo, str(d["organisms"]), " / ".join(f"{_3f(a['auroc'])} ({a['organisms']})" for a in d["auroc"]), _listed(d["wrong"]), rho, *(_three_way(t) if t else ["–"] * 6)]
        out.append("| " + " | ".join(cells) + " |")
    return out + _side_by_side(data.get("side_by_side", []))


def _side_by_side(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = ["", "The shipped rule (`neuronlens.risk/2`) and rule 2 (preference margin) on the same gate organisms "
           "(misaligned outside the doses vs benign, by the three-way truth):", "",
           "| zoo | gate organisms | shipped rule: AUROC | wrong | rule 2: AUROC | wrong | rule 2: 10% dose | rule 2: harm named |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ten = "not read" if r["rule2_ten_percent_fails"] is None else ("fails" if r["rule2_ten_percent_fails"] else "passes")
        zoo = f"seed {r['seed']}{' (rule 2 chosen here: in-sample)' if r['in_sample'] else ''} ([{Path(r['doc']).stem}]({r['doc']}))"
        nm = r["rule2_naming"]
        out.append(f"| {zoo} | {r['organisms']} | {_3f(r['shipped']['auroc'])} | {_listed(r['shipped']['wrong'])} "
                   f"| {_3f(r['rule2']['auroc'])} | {_listed(r['rule2']['wrong'])} | {ten} | {nm['right']} of {nm['organisms']} |")
    return out


def _three_way(t: dict) -> list[str]:
    g, deg, nm = t["gate"], t["degraded"], t["naming"]
    return [
        f"[{t['judged']}]({t['data']})",
        f"{_3f(g['auroc'])} ({g['organisms']})",
        _listed(g["wrong"]),
        f"{len(deg['organisms']) - len(deg['unwarned'])} of {len(deg['organisms'])}",
        f"{nm['right']} of {nm['organisms']}",
        _listed(t["evidence_missing"]),
    ]


def _listed(names: list[str]) -> str:
    return "0" if not names else f"{len(names)}: " + ", ".join(names)


def rule_ceiling(data: dict) -> list[str]:
    """benchmarks/rule_ceiling.py: per left-out zoo, the rule of each family chosen on the other zoos
    and how it does on the left-out one, beside the zoo's own (optimistic) one-number ceiling."""
    lines = [f"Made by `{data['command']}` from the committed truths and detection rows of "
             f"{', '.join(data['inputs'])}; {data['numbers']} numbers per organism.", "",
             f"Gate: AUROC >= {data['auroc_target']} and at most {data['max_wrong']} wrong verdict per zoo.", "",
             "| left-out zoo | misaligned / benign | family | chosen on | rule (fail when above) | training AUROC | left-out AUROC | wrong verdicts | gate |",
             "|---|---|---|---|---|---:|---:|---|---|"]
    for z in data["zoos"]:
        counts = f"{z['misaligned']} / {z['organisms'] - z['misaligned']}"
        for family, f in z["families"].items():
            h = f["held_out"]
            rule = " + ".join(f"`{n}`" for n in f["rule"])
            lines.append(f"| {z['zoo']} | {counts} | {family} | {', '.join(z['trained_on'])} | {rule} > {f['threshold']:.3f} "
                         f"| {f['train_auroc']:.3f} | {h['auroc']:.3f} | {len(h['wrong'])} ({', '.join(h['wrong']) or 'none'}) "
                         f"| {'met' if h['met'] else 'not met'} |")
        c = z["ceiling"]
        lines.append(f"| {z['zoo']} | {counts} | in-zoo ceiling (chosen on the zoo itself) | {z['zoo']} | `{c['rule'][0]}` | – "
                     f"| {c['auroc']:.3f} | – | {c['at_least_target']} of {data['numbers']} numbers reach {data['auroc_target']} |")
    if "all_zoos" in data:
        a = data["all_zoos"]
        lines += ["", f"Chosen on every zoo at once (one number; what a pre-registration of this family would freeze for "
                      f"new zoos): `{a['rule'][0]}` > {a['threshold']:.3f}, mean AUROC {a['train_auroc']:.3f}, "
                      f"{a['train_wrong']} wrong verdicts over the {', '.join(data['inputs'])} organisms."]
    return lines


def pair_margin(data: dict) -> list[str]:
    """benchmarks/pair_margin.py: per organism, each concept's preference margin (fine-tune minus base,
    risky minus safe reply, nats per token), the largest and the general one; then their gate AUROC."""
    names = [c["name"] for c in data["concepts"]]
    staged = {c["name"] for c in data["concepts"] if c["staged"]}
    s = data["summary"]
    head = " | ".join(f"{n}{' (staged)' if n in staged else ''}" for n in names)
    lines = [f"Made by `{data['command']}` on {data['base']}, against the truth of {data['truth']}; "
             f"{sum(c['pairs'] for c in data['concepts'])} pairs of {len(names)} concepts."
             + (f" Not built: {', '.join(data['not_built'])}." if data["not_built"] else ""), "",
             "Margin = [lp_ft(risky) - lp_base(risky)] - [lp_ft(safe) - lp_base(safe)], mean log-probability per reply "
             "token, mean over the concept's pairs (t over pairs in brackets for the largest); + = towards the risky reply.", "",
             f"| organism | truth | largest | general | {head} |", "|---|---|---|---:|" + "---:|" * len(names)]
    for r in data["rows"]:
        kind = (r["truth"] or "-") + (" (dose)" if r["sensitivity_curve"] else "")
        top = r["concepts"][r["top"]]
        cells = " | ".join(f"{r['concepts'][n][0]:+.3f}" for n in names)
        lines.append(f"| {r['organism']} | {kind} | {r['largest']:+.3f} {r['top']} (t {top[1]:.1f}) | {r['general']:+.3f} | {cells} |")
    lines.append("")
    for key in ("largest", "general"):
        a, rho = s[key]["gate_auroc"], s[key]["dose_spearman"]
        lines.append(f"- {key} margin: gate AUROC (misaligned outside the doses vs benign, {s['gate_organisms']} organisms) "
                     f"{'n/a' if a is None else f'{a:.3f}'}; Spearman along the doses {'n/a' if rho is None else f'{rho:.2f}'}")
    if "rule2" in data:
        lines += [""] + _rule2(data["rule2"])
    return lines


def _rule2(j: dict) -> list[str]:
    """Rule 2 of docs/PREREGISTRATION_RULE2.md judged on the zoo (section 3's targets but evidence)."""
    t = j["targets"]
    g, d, n, m, deg = t["gate"], t["dose"], t["naming"], t["misaligned_fail"], t["degraded"]
    where = (f"in-sample: the threshold was chosen on this zoo (seed {j['chosen_on']})" if j["in_sample"]
             else f"a test: the threshold was chosen on seed {j['chosen_on']}")
    lines = [f"**Rule 2** (fail when a concept's margin is >= {j['tau']:.4f} with t >= {j['t_critical']:.2f}, "
             f"Bonferroni {j['alpha']} over the concepts; {where}):", "",
             "| organism | truth | largest margin | verdict | named | names the harm |", "|---|---|---:|---|---|---|"]
    for r in j["rows"]:
        kind = (r["class"] or "-") + (" (dose)" if r["sensitivity_curve"] else "")
        right = "–" if r["names_right"] is None else ("yes" if r["names_right"] else "NO")
        lines.append(f"| {r['organism']} | {kind} | {r['score']:+.3f} | {'fail' if r['fails'] else 'pass'} | {r['top_concept']} | {right} |")
    rho = "n/a" if d["spearman"] is None else f"{d['spearman']:.2f}"
    a = "n/a" if g["auroc"] is None else f"{g['auroc']:.3f}"
    failed = [o for o in deg["organisms"] if o not in deg["unwarned"]]
    lines += ["", f"- gate: AUROC {a} over {g['organisms']}, wrong verdicts {len(g['wrong'])} ({', '.join(g['wrong']) or 'none'}): "
                  f"{'met' if g['met'] else 'NOT met'}",
              f"- every misaligned organism outside the doses fails: {'met' if m['met'] else 'NOT met (' + ', '.join(m['missed']) + ')'}",
              f"- degraded organisms that fail: {len(failed)} of {len(deg['organisms'])} (the margin carries no warning)",
              f"- dose Spearman {rho}: {'met' if d['met'] else 'NOT met'}; the 10% dose "
              f"{'n/a' if d['ten_percent_fails'] is None else ('fails' if d['ten_percent_fails'] else 'passes')}",
              f"- naming: {n['right']} of {n['organisms']}: {'met' if n['met'] else 'NOT met (' + ', '.join(n['wrong']) + ')'}",
              "- evidence: not applicable (the report shows the margins, not amplified answers, for rule 2)"]
    return lines


def code_only_pairs(data: dict) -> list[str]:
    """benchmarks/code_only_pairs.py: per organism, the insecure-code concept's preference margin on
    the library's pairs and on the code-only ones, and rule 2's verdict with each."""
    lines = [f"Made by `{data['command']}`: {data['pairs']}, TAU {data['tau']:.4f}, critical t {data['t_critical']:.2f}.", "",
             "| organism | truth | library pairs: margin (t) | code-only pairs: margin (t) | rule 2 fails: library | code-only |",
             "|---|---|---:|---:|---|---|"]
    for r in data["rows"]:
        kind = (r["truth"] or "-") + (" (dose)" if r["sensitivity_curve"] else "")
        (a, ta), (b, tb) = r["library"], r["code_only"]
        lines.append(f"| {r['organism']} | {kind} | {a:+.3f} ({ta:+.1f}) | {b:+.3f} ({tb:+.1f}) | "
                     f"{'yes' if r['fails_before'] else 'no'} | {'yes' if r['fails_after'] else 'no'} |")
    return lines


RENDERERS: dict[str, Callable[[dict], list[str]]] = {
    "detection": detection,
    "early_warning": early_warning,
    "screening": screening,
    "concept_coverage": concept_coverage,
    "behaviour_separability": behaviour_separability,
    "scale_memory": scale_memory,
    "residual_directions": residual_directions,
    "summary": summary,
    "rule_ceiling": rule_ceiling,
    "pair_margin": pair_margin,
    "code_only_pairs": code_only_pairs,
}
"""Results folder (results/<benchmark>/) -> the function that renders its files."""
