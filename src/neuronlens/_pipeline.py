"""The audit pipeline, top to bottom:

    validate inputs -> probe sequences (base responses, cached) -> base pass (capture, encode)
    -> fine-tuned pass (capture, encode, paired sums) -> [own-response pass] -> risk -> report

Everything that can be wrong with the inputs is checked before the first forward pass. With
lazily-loaded handles only one model is resident at a time; a PEFT adapter on the audited base
shares the base weights (adapter injected after the base pass, removed afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from . import __version__
from ._progress import progress
from .capture import Batch, TokenSequence, gather, make_batches, massive_keep, run_to_layers
from .config import AuditConfig, default_layers
from .errors import ConfigError, ModelLoadError
from .models import ModelHandle, load_model
from .probes import ProbeSet, load_probe_set, response_sequences
from .report import AuditReport, LayerDrift, rank_features
from .risk import EvidenceStore, RiskSetup, assess, load_concepts, prepare_risk
from .risk._labels import merge_imported
from .saes import SAESet, load_sae
from .stats import AuditSums, per_prompt_means, residual_drift

METRICS = ("drift", "misalignment_score")


@dataclass
class _BaseBatch:
    """What the base pass keeps per batch for the paired fine-tuned pass."""

    batch: Batch
    resid: dict[int, torch.Tensor]
    keep: dict[int, torch.Tensor]
    prompt_key: torch.Tensor
    probe_of_token: list[str]


def compare_models(
    base_model: ModelHandle | str,
    ft_model: ModelHandle | str,
    sae: SAESet | None = None,
    probes: Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
    *,
    config: AuditConfig | None = None,
    layers: Sequence[int] | None = None,
    keep_both: bool = False,
) -> AuditReport:
    """Audit `ft_model` against `base_model` and return a typed :class:`AuditReport`.

    `sae`: SAEs for the audited layers (default: :func:`load_sae` for the default layers).
    `probes`: built-in probe-set names or prompt files (default: every built-in set).
    `metrics`: 'drift' always; 'misalignment_score' adds the risk stage (concept shifts, risky
    features, score and verdict). `config` holds every other setting (:class:`AuditConfig`);
    `layers` overrides its layers. Handles passed unloaded are loaded one at a time and released
    afterwards unless `keep_both`.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cfg = replace(config or AuditConfig())
    if probes is not None:
        cfg.probes = list(probes)
    if layers is not None:
        cfg.layers = list(layers)
    base = base_model if isinstance(base_model, ModelHandle) else load_model(base_model)
    ft = ft_model if isinstance(ft_model, ModelHandle) else load_model(ft_model)

    # 1. validate everything before any long work ------------------------------------------------
    probe_sets = preflight(base, ft, cfg, metrics)
    sae, audit_layers = _resolve_saes(base, sae, cfg)
    cfg.layers = audit_layers
    imported_labels = merge_imported(cfg.labels, {la: sae[la].d_sae for la in audit_layers})
    timings["validate_s"] = time.perf_counter() - t_start

    # 2. the token sequences both models read: prompts + base responses (cached) -----------------
    t = time.perf_counter()
    n_prompts = sum(len(ps.prompts) for ps in probe_sets)
    base_loaded_before = base.is_loaded
    with progress("Base responses to probes", n_prompts) as advance:
        seqs = response_sequences(base, probe_sets, cfg.max_new_tokens, token_budget=cfg.token_budget, on_batch=advance)
    timings["base_responses_s"] = time.perf_counter() - t

    # 3. risk concepts: their latents and feature directions on the base model (cached) -----------
    t = time.perf_counter()
    score_risk = "misalignment_score" in metrics
    risk_setup = prepare_risk(base, sae, audit_layers, cfg.concepts) if score_risk else None
    evidence = EvidenceStore(prompts={ps.name: ps.prompts for ps in probe_sets}) if score_risk else None
    timings["concepts_s"] = time.perf_counter() - t
    sums = AuditSums.empty()
    acc = _Accumulator(sae, sums, risk_setup, evidence)
    reads = ["same"] + (["own"] if cfg.own_responses else [])
    pad_id = base.tokenizer.pad_token_id or 0

    # 4. base pass, then fine-tuned pass on the same tokens (and on its own responses) ----------
    def fine_tuned_passes(ft_nn: nn.Module, base_batches: list[_BaseBatch]) -> None:
        t = time.perf_counter()
        _ft_pass(ft_nn, base_batches, audit_layers, acc)
        timings["ft_pass_s"] = time.perf_counter() - t
        base_batches.clear()
        if cfg.own_responses:
            t = time.perf_counter()
            _own_pass(_ModelView(ft.digest, ft.tokenizer, ft_nn), probe_sets, audit_layers, cfg, acc, pad_id)
            timings["ft_own_pass_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if _shares_base_weights(base, ft):
        base_nn = base.model
        base_batches = _base_pass(base_nn, seqs, audit_layers, cfg, acc, pad_id, reads)
        timings["base_pass_s"] = time.perf_counter() - t
        with _adapter_on(base_nn, ft) as ft_nn:
            fine_tuned_passes(ft_nn, base_batches)
    else:
        with _resident(base, keep=keep_both or base_loaded_before) as base_nn:
            base_batches = _base_pass(base_nn, seqs, audit_layers, cfg, acc, pad_id, reads)
        timings["base_pass_s"] = time.perf_counter() - t
        with _resident(ft, keep=keep_both or ft.is_loaded) as ft_nn:
            fine_tuned_passes(ft_nn, base_batches)
    if not (keep_both or base_loaded_before):
        base.release()

    # 5. layer drift and the most-drifted latents --------------------------------------------------
    report = AuditReport(
        base=base.identity,
        ft=ft.identity,
        saes=[s for s in sae.identity() if s["layer"] in audit_layers],
        probe_sets=[ps.identity() for ps in probe_sets],
        config=cfg.to_dict(),
        layers=[],
        top={},
        neuronlens_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sae_warnings=SAESet({la: sae[la] for la in audit_layers}).quality_warnings(),
        timings=timings,
        sums=sums,
        reads=reads,
    )
    _fill_layers(report, [ps.name for ps in probe_sets], cfg)

    # 6. risk: risky features, misalignment score, verdict ---------------------------------------
    if risk_setup is not None and evidence is not None:
        t = time.perf_counter()
        report.risk = assess(report, risk_setup, evidence, base.tokenizer, imported_labels)
        timings["risk_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    return report


# -- validation --------------------------------------------------------------------------------


def preflight(base: ModelHandle, ft: ModelHandle, cfg: AuditConfig, metrics: Sequence[str] = METRICS) -> list[ProbeSet]:
    """Every cheap check of an audit's inputs (no weights loaded, nothing generated); returns the
    probe sets. The CLI runs it before loading or training SAEs."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"Unknown metric(s) {unknown}.", f"Use any of {list(METRICS)}.")
    _check_compatible(base, ft)
    cfg.validate(base.n_layers)
    if "misalignment_score" in metrics:
        load_concepts(cfg.concepts)  # a malformed concept file fails here, before any long work
    return _load_probe_sets(cfg)


def _check_compatible(base: ModelHandle, ft: ModelHandle) -> None:
    if base.n_layers != ft.n_layers or base.d_model != ft.d_model:
        raise ModelLoadError(
            f"Base ({base.name}: {base.n_layers} layers, d_model {base.d_model}) and fine-tuned "
            f"({ft.name}: {ft.n_layers} layers, d_model {ft.d_model}) have different architectures.",
            "Audit a fine-tune against the base model it was fine-tuned from.",
        )
    bt, ftok = base.tokenizer, ft.tokenizer
    if len(bt) != len(ftok) or bt.get_vocab() != ftok.get_vocab():
        raise ModelLoadError(
            f"Base and fine-tuned models use different tokenizers/vocabularies ({len(bt)} vs {len(ftok)} tokens).",
            "Both models must share one tokenizer: audit a fine-tune against its own base model.",
        )


def _resolve_saes(base: ModelHandle, sae: SAESet | None, cfg: AuditConfig) -> tuple[SAESet, list[int]]:
    """The SAEs to use (loaded, shipped, cached or trained when not given) and the audited layers,
    checked against each other and against the model."""
    if sae is None:
        sae = load_sae(base, cfg.layers or default_layers(base.n_layers))
    layers = sorted(cfg.layers or sae.layers)
    missing = [layer for layer in layers if layer not in sae]
    if missing:
        raise ConfigError(
            f"No SAE was given for layer(s) {missing} (SAEs cover {sae.layers}).",
            "Audit only the SAEs' layers, or load SAEs for the missing layers.",
        )
    for layer in layers:
        if sae[layer].info.d_in != base.d_model:
            raise ConfigError(
                f"The SAE for layer {layer} has d_in {sae[layer].info.d_in}, the model has d_model {base.d_model}.",
                "Use SAEs trained on this model.",
            )
    return sae, layers


def _load_probe_sets(cfg: AuditConfig) -> list[ProbeSet]:
    sets = [load_probe_set(p, cfg.max_prompts_per_set) for p in cfg.probes]
    names = [s.name for s in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"Probe set name(s) {dupes} appear twice.", "Give each probe file a distinct name.")
    for s in sets:
        if "|" in s.name:
            raise ConfigError(f"Probe set name {s.name!r} contains '|'.", "Rename the file without '|'.")
        if len(s.prompts) < 2:
            raise ConfigError(f"Probe set {s.name!r} has {len(s.prompts)} prompt(s).", "Give each set at least 2 prompts.")
    return sets


# -- residency ---------------------------------------------------------------------------------


def _shares_base_weights(base: ModelHandle, ft: ModelHandle) -> bool:
    return ft.kind == "peft" and ft.base is not None and ft.base.digest == base.digest and not ft.is_loaded


@contextmanager
def _resident(handle: ModelHandle, *, keep: bool) -> Iterator[nn.Module]:
    model = handle.model
    try:
        yield model
    finally:
        if not keep:
            handle.release()


@contextmanager
def _adapter_on(base_nn: nn.Module, ft: ModelHandle) -> Iterator[nn.Module]:
    """`ft`'s PEFT adapter injected into the resident base weights; removed again on exit, which
    restores the base model exactly."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base_nn, str(ft.path), is_trainable=False)
    peft_model.eval()
    try:
        yield peft_model
    finally:
        peft_model.unload()


# -- passes ------------------------------------------------------------------------------------


def _prompt_keys(batch: Batch) -> tuple[torch.Tensor, list[str]]:
    """For each measured token: which prompt it belongs to (its batch row: one row is one
    prompt's sequence) and that prompt's probe set."""
    return batch.row.clone(), [batch.sequences[r].probe_set for r in batch.row.tolist()]


def _split_by_probe(probes: list[str], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, list[int]] = {}
    for i, (p, k) in enumerate(zip(probes, keep.tolist())):
        if k:
            out.setdefault(p, []).append(i)
    return {p: torch.tensor(ix, dtype=torch.long) for p, ix in out.items()}


@dataclass
class _Accumulator:
    """Adds one batch's SAE codes to every statistic the audit keeps: latent sums, residual
    sums, concept-projection sums (with risk scoring) and token-level evidence."""

    sae: SAESet
    sums: AuditSums
    risk: RiskSetup | None
    evidence: EvidenceStore | None
    own_base_means: dict[tuple[str, int, tuple[str, int]], torch.Tensor] = field(default_factory=dict)

    def paired(self, layer: int, bb: _BaseBatch, xf: torch.Tensor) -> None:
        """Base and fine-tuned residuals of the same tokens ('same' read)."""
        xb, keep, key = bb.resid[layer], bb.keep[layer], bb.prompt_key
        cb, cf = self.sae[layer].encode(xb), self.sae[layer].encode(xf)
        for probe, ix in _split_by_probe(bb.probe_of_token, keep).items():
            self.sums.latent("same", layer, probe, self.sae[layer].d_sae).add_paired(cb[ix], cf[ix], key[ix])
            self.sums.resid(layer, probe).add(xb[ix], xf[ix])
            if self.risk is not None:
                pb, pf = self.risk.project(layer, cb[ix]), self.risk.project(layer, cf[ix])
                self.sums.concept("same", layer, probe, len(self.risk.names)).add_paired(pb, pf, key[ix])
        self._keep_evidence("same", layer, bb.batch, keep, cb, cf)

    def one_side(self, read: str, side: str, layer: int, batch: Batch, x: torch.Tensor, keep: torch.Tensor) -> None:
        """One model's residuals (the 'own' read, where the two models read different text). The
        base side's per-prompt means are kept so that the fine-tuned side can be paired with them
        prompt by prompt (same prompt, different responses)."""
        key, probes = _prompt_keys(batch)
        codes = self.sae[layer].encode(x)
        for probe, ix in _split_by_probe(probes, keep).items():
            stats = [(self.sums.latent(read, layer, probe, self.sae[layer].d_sae), codes[ix], "latent")]
            if self.risk is not None:
                proj = self.risk.project(layer, codes[ix])
                stats.append((self.sums.concept(read, layer, probe, len(self.risk.names)), proj, "concept"))
            for sums, values, kind in stats:
                sums.add_side(side, values, key[ix])
                rows, means = per_prompt_means(values, key[ix])
                prompt_ids = [(probe, batch.sequences[int(r)].prompt_index) for r in rows]
                if side == "base":
                    for pid, m in zip(prompt_ids, means):
                        self.own_base_means[(kind, layer, pid)] = m
                else:
                    pairs = [(m, self.own_base_means.get((kind, layer, pid))) for pid, m in zip(prompt_ids, means)]
                    diffs = [m - b for m, b in pairs if b is not None]
                    if diffs:
                        sums.add_prompt_diffs(torch.stack(diffs))
        if side == "ft":
            self._keep_evidence(read, layer, batch, keep, None, codes)

    def _keep_evidence(
        self, read: str, layer: int, batch: Batch, keep: torch.Tensor, cb: torch.Tensor | None, cf: torch.Tensor
    ) -> None:
        if self.evidence is None:
            return
        token_ids = batch.input_ids[batch.row, batch.col]
        for r, seq in enumerate(batch.sequences):
            sel = torch.nonzero((batch.row == r) & keep).squeeze(1)
            if sel.numel() == 0:
                continue
            self.evidence.add(
                read, layer, seq.probe_set, seq.prompt_index, token_ids[sel].tolist(),
                None if cb is None else cb[sel], cf[sel],
            )


def _base_pass(
    model: nn.Module, seqs: list[TokenSequence], layers: list[int], cfg: AuditConfig, acc: _Accumulator, pad_id: int,
    reads: list[str],
) -> list[_BaseBatch]:
    device = next(model.parameters()).device
    kept: list[_BaseBatch] = []
    with progress("Base model pass", len(seqs)) as advance:
        for batch in make_batches(seqs, cfg.positions, cfg.token_budget, pad_id):
            resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
            x = {layer: gather(resid[layer], batch) for layer in layers}
            keep = {layer: massive_keep(x[layer], cfg.massive_activation_factor) for layer in layers}
            key, probes = _prompt_keys(batch)
            if "own" in reads:  # the base model's own responses are exactly these sequences
                for layer in layers:
                    acc.one_side("own", "base", layer, batch, x[layer], keep[layer])
            kept.append(_BaseBatch(batch, x, keep, key, probes))
            advance(len(batch.sequences))
    return kept


def _ft_pass(model: nn.Module, base_batches: list[_BaseBatch], layers: list[int], acc: _Accumulator) -> None:
    device = next(model.parameters()).device
    with progress("Fine-tuned model pass", sum(len(b.batch.sequences) for b in base_batches)) as advance:
        for bb in base_batches:
            b = bb.batch
            resid = run_to_layers(model, b.input_ids.to(device), b.attention_mask.to(device), layers)
            for layer in layers:
                acc.paired(layer, bb, gather(resid[layer], b))
            advance(len(b.sequences))


@dataclass
class _ModelView:
    """The three things response generation needs, for a model that may not have a handle of its
    own (an adapter injected into shared base weights)."""

    digest: str
    tokenizer: Any
    model: nn.Module


def _own_pass(
    view: _ModelView, probe_sets: list[ProbeSet], layers: list[int], cfg: AuditConfig, acc: _Accumulator, pad_id: int
) -> None:
    """Read the fine-tuned model on its own greedy responses (unpaired with the base read)."""
    n_prompts = sum(len(ps.prompts) for ps in probe_sets)
    with progress("Fine-tuned responses to probes", n_prompts) as advance:
        seqs = response_sequences(view, probe_sets, cfg.max_new_tokens, token_budget=cfg.token_budget, on_batch=advance)
    device = next(view.model.parameters()).device
    with progress("Fine-tuned model on its own responses", len(seqs)) as advance:
        for batch in make_batches(seqs, cfg.positions, cfg.token_budget, pad_id):
            resid = run_to_layers(view.model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
            for layer in layers:
                x = gather(resid[layer], batch)
                acc.one_side("own", "ft", layer, batch, x, massive_keep(x, cfg.massive_activation_factor))
            advance(len(batch.sequences))


# -- report ------------------------------------------------------------------------------------


def _fill_layers(report: AuditReport, probe_names: list[str], cfg: AuditConfig) -> None:
    assert report.sums is not None
    for layer in cfg.layers or []:
        total = residual_drift(report.sums.resid_total(layer))
        by_probe = {p: residual_drift(report.sums.resid_total(layer, [p]))["drift"] for p in probe_names}
        table = report.drift_table(layer)
        report.layers.append(
            LayerDrift(
                layer=layer,
                drift=total["drift"],
                cosine=total["cosine"],
                relative_rms=total["relative_rms"],
                n_tokens=total["n_tokens"],
                by_probe=by_probe,
                n_significant_latents=sum(f.significant for f in table),
                n_latents=len(table),
            )
        )
        report.top[layer] = rank_features(table)[: cfg.top_k_saved]


__all__ = ["METRICS", "compare_models", "preflight"]
