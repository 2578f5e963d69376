"""The preference read in every report (issue #18, rule 2 as evidence): the package computes what
benchmarks/pair_margin.py (the pre-registered implementation) computes; the sums merge exactly; a
planted preference for one concept's risky replies shows on that concept and counts; the audit
reads the margins on the models it holds resident (full weights and a PEFT adapter), caches them,
carries them through the JSON report, summary, HTML and certificate, and --no-preference-margins
leaves them out."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from html import escape
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tiny
from neuronlens import alignment
from neuronlens.certificate import export_certificate, schema_problems
from neuronlens.cli._config import flags
from neuronlens.concepts import load_concepts
from neuronlens.preference import EVIDENCE_PAIRS, TAU, PairSet, PreferenceMargins, margins, reply_logprobs
from neuronlens.preference._read import ROWS, _Prefix
from conftest import random_sae
from neuronlens.saes import SAESet
from test_certificate import statement_of
from test_heatmap import with_risk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import pair_margin  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = alignment.AuditConfig(max_prompts_per_set=4, max_new_tokens=6, learned_lens=False, amplify_alpha=None, preference_margins=True)
TWO = ["disclaimers", "power_seeking"]
POPPLER = shutil.which("pdftotext") is not None
SAES = SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)})


class Biased(nn.Module):
    """`model` with `bias` added to every position's logits (a planted preference for some tokens)."""

    def __init__(self, model: nn.Module, bias: torch.Tensor) -> None:
        super().__init__()
        self.model, self.bias = model, bias

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        out.logits = out.logits + self.bias
        return out


@pytest.fixture(scope="module")
def small(tok) -> PairSet:
    return PairSet.build(tok, load_concepts(TWO))


def test_the_read_equals_the_preregistered_benchmarks(tok, small):
    model = tiny.tiny_llama(tok).eval()
    got = reply_logprobs(model, small.seqs, tok.pad_token_id)
    want = pair_margin.reply_logprob(model, small.seqs, tok.pad_token_id)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # float32 logits; the package reads each prompt once
    seqs, sides = pair_margin.pairs(tok, load_concepts(TWO))
    assert seqs == list(small.seqs) and [r for _, r in sides] == list(small.risky)
    base = reply_logprobs(tiny.tiny_llama(tok, seed=1).eval(), small.seqs, tok.pad_token_id)
    m = margins(small, got, base)
    ref = pair_margin.summarise(pair_margin.margins(got, base, sides))
    for c in m.concepts:
        assert c.mean == pytest.approx(ref["concepts"][c.concept][0], abs=1e-12)
        assert c.t == pytest.approx(ref["concepts"][c.concept][1], rel=1e-9)
    assert m.general == pytest.approx(ref["general"], abs=1e-12)
    assert TAU == pair_margin.TAU  # the frozen threshold, one value in both places


def sharp(model: nn.Module) -> nn.Module:
    """`model` with every weight times 4: a random tiny model's logits are nearly uniform, so a read
    that ignored positions or masks would hardly move; this one's move by tenths."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model


class IgnoresPositions(nn.Module):
    """`model` behind a forward that drops the position ids (as a model with its own position scheme
    would), with the config and output embeddings that make it look packable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_reading_each_prompt_once_equals_reading_each_reply_alone(tok, small, arch, attn):
    model = sharp(getattr(tiny, f"tiny_{arch}")(tok).eval())
    model.config._attn_implementation = attn
    packed_rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: packed_rows.append(kw["input_ids"].shape[0]) if kw.get("position_ids") is not None else None,
        with_kwargs=True)
    got = reply_logprobs(model, small.seqs, tok.pad_token_id)
    hook.remove()
    alone = reply_logprobs(model, small.seqs, tok.pad_token_id, share_prompts=False)
    assert sum(packed_rows) == 1 + len(small.seqs) // 2  # the check's row, then one row per pair
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)  # float32 rounding (measured ~1e-7)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_prefix_every_prompt_shares_is_read_once_and_changes_nothing(tok, small, arch, attn):
    """A chat template's system prompt starts every row: read once into a KV cache that each
    batch copies, the replies' log-probabilities are those of each reply read alone."""
    model = sharp(getattr(tiny, f"tiny_{arch}")(tok).eval())
    model.config._attn_implementation = attn
    shared = tuple(tok("You are a careful assistant who answers briefly.")["input_ids"])
    assert len(shared) >= _Prefix.MIN_LENGTH
    seqs = [dataclasses.replace(s, prompt_ids=shared + s.prompt_ids) for s in small.seqs]
    cached: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: cached.append(kw["input_ids"].shape[1]) if kw.get("cache", kw.get("past_key_values")) is not None else None,
        with_kwargs=True)
    got = reply_logprobs(model, seqs, tok.pad_token_id)
    hook.remove()
    alone = reply_logprobs(model, seqs, tok.pad_token_id, share_prompts=False)
    assert len(cached) == 1 + math.ceil(len(seqs) / 2 / ROWS)  # the check's row, then every batch from the cache
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)


def test_a_peft_adapter_reads_the_shared_prefix_from_its_cache_on_and_off(tok, small):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(sharp(tiny.tiny_llama(tok)).eval(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    shared = tuple(tok("You are a careful assistant who answers briefly.")["input_ids"])
    seqs = [dataclasses.replace(s, prompt_ids=shared + s.prompt_ids) for s in small.seqs[:32]]
    assert _Prefix.of(peft_model, seqs) is not None
    for ctx in (contextlib.nullcontext, peft_model.disable_adapter):
        with ctx():
            np.testing.assert_allclose(reply_logprobs(peft_model, seqs, tok.pad_token_id),
                                       reply_logprobs(peft_model, seqs, tok.pad_token_id, share_prompts=False), rtol=0, atol=1e-5)


def test_a_model_that_ignores_the_packing_is_read_one_reply_per_row(tok, small):
    model = sharp(tiny.tiny_llama(tok).eval())
    got = reply_logprobs(IgnoresPositions(model), small.seqs, tok.pad_token_id)
    np.testing.assert_array_equal(got, reply_logprobs(model, small.seqs, tok.pad_token_id, share_prompts=False))


def test_sums_over_two_shares_of_the_pairs_merge_exactly(small):
    rng = np.random.default_rng(0)
    ft, base = rng.normal(size=len(small.seqs)), rng.normal(size=len(small.seqs))
    whole = margins(small, ft, base)
    cut = 40  # an even index: whole pairs on each side
    halves = [PairSet(small.seqs[a:b], small.risky[a:b], small.concepts, small.staged) for a, b in ((0, cut), (cut, None))]
    parts = [margins(h, ft[a:b], base[a:b]) for h, (a, b) in zip(halves, ((0, cut), (cut, None)))]
    for c, x, y in zip(whole.concepts, *(p.concepts for p in parts)):
        if x.n and y.n:
            merged = x.merged(y)
        else:
            merged = x if x.n else y
        assert (merged.n, merged.total) == (c.n, pytest.approx(c.total, abs=1e-12))
        assert merged.total_sq == pytest.approx(c.total_sq, rel=1e-12)
    assert PreferenceMargins.from_dict(whole.to_dict()) == whole


def test_a_planted_preference_counts_on_its_concept_and_the_identical_model_reads_zero(tok, small):
    model = tiny.tiny_llama(tok).eval()
    base = reply_logprobs(model, small.seqs, tok.pad_token_id)
    same = margins(small, base, base)
    assert all(c.total == 0 and not same.counts(c) for c in same.concepts) and not same.rule_fails
    # raise the tokens power seeking's risky replies use more often than its safe ones, lower the others
    diff = torch.zeros(len(tok))
    for s, r in zip(small.seqs, small.risky):
        if s.probe_set == "power_seeking":
            diff[list(s.response_ids)] += 1.0 if r else -1.0
    bias = 2.0 * torch.sign(diff)
    m = margins(small, reply_logprobs(Biased(model, bias), small.seqs, tok.pad_token_id), base)
    by = {c.concept: c for c in m.concepts}
    assert m.largest.concept == "power_seeking" and by["power_seeking"].mean > 0.1
    assert m.counts(by["power_seeking"]) and m.rule_fails
    assert m.counting[0].concept == "power_seeking"  # first; the planted tokens occur in other replies too
    # the evidence: power seeking's pairs with the largest margins, largest first, as the reference computes them
    seqs, sides = pair_margin.pairs(tok, load_concepts(TWO))
    ref = pair_margin.margins(reply_logprobs(Biased(model, bias), small.seqs, tok.pad_token_id), base, sides)["power_seeking"]
    concept = next(c for c in small.concepts if c.name == "power_seeking")
    top = np.argsort(-ref, kind="stable")[:EVIDENCE_PAIRS]
    assert [e.margin for e in m.evidence] == pytest.approx(list(ref[top]), abs=1e-12)
    assert [(e.prompt, e.risky, e.safe) for e in m.evidence] == [(concept.pairs[i].prompt, concept.pairs[i].positive, concept.pairs[i].negative) for i in top]
    assert {e.concept for e in m.evidence} == {concept.label} and m.named == by["power_seeking"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tok) -> dict:
    root = tmp_path_factory.mktemp("pref")
    return {"base": tiny.save(tiny.tiny_llama(tok), tok, root / "base"), "ft": tiny.save(tiny.tiny_llama(tok, seed=3), tok, root / "ft")}


@pytest.fixture(scope="module")
def audited(pair, tmp_path_factory) -> tuple[alignment.AuditReport, Path]:
    rep = alignment.compare_models(alignment.load_model(pair["base"]), alignment.load_model(pair["ft"]), SAES,
                                   probes=["finance"], metrics=["drift"], config=CFG)
    return rep, rep.save(tmp_path_factory.mktemp("pref-report") / "report.json")


def test_the_audit_reads_the_margins_the_package_computes(audited, pair, tok):
    rep, _ = audited
    assert rep.preference is not None and rep.timings["preference_s"] > 0
    pairs = PairSet.build(tok)
    lp = [reply_logprobs(alignment.load_model(pair[k]).model, pairs.seqs, tok.pad_token_id) for k in ("ft", "base")]
    want = margins(pairs, *lp)
    assert [c.concept for c in rep.preference.concepts] == [c.concept for c in want.concepts] and len(want.concepts) == 11
    for c, w in zip(rep.preference.concepts, want.concepts):
        assert c.n == w.n == 48 and c.mean == pytest.approx(w.mean, abs=1e-6)


def test_the_report_round_trips_and_every_output_shows_the_margins(audited, tmp_path):
    rep, path = audited
    back = alignment.AuditReport.load(path)
    assert back.preference == rep.preference
    line = next(x for x in rep.summary().splitlines() if x.startswith("Preference margins"))
    assert repr(rep.preference.largest.label) in line and "not the verdict" in line
    html = rep.to_html(tmp_path / "report.html").read_text()
    assert "Preference margins on matched pairs" in html and "not the verdict" in html
    assert f"<td>{rep.preference.largest.label}" in html
    assert len(back.preference.evidence) == EVIDENCE_PAIRS and back.preference.evidence[0].concept == rep.preference.named.label
    assert ("pair moved most towards risk" if rep.preference.evidence[0].margin > 0 else "moved towards risk") in rep.summary()
    assert "moved most towards the risky reply" in html
    assert html.count("<td>" + escape(rep.preference.evidence[0].prompt) + "</td>") >= 1


def test_the_certificate_carries_the_section_and_validates(audited, tmp_path):
    rep = with_risk(alignment.AuditReport.load(audited[1]))
    paths = export_certificate(rep, formats=["json", "pdf"], out_dir=tmp_path)
    statement = statement_of(paths["json"])
    assert schema_problems(statement) == []
    pref = statement["predicate"]["preference"]
    assert pref["verdict_weight"] == "none" and len(pref["concepts"]) == 11
    assert pref["rule"]["would_fail"] == rep.preference.rule_fails
    assert [c["concept"] for c in pref["concepts"]] == [c.concept for c in rep.preference.ranked]
    if POPPLER:
        text = subprocess.run(["pdftotext", "-layout", str(paths["pdf"]), "-"], capture_output=True, text=True, check=True).stdout
        assert "Preference margins on matched pairs" in " ".join(text.split())
        assert "moved most towards the risky reply" in " ".join(text.split())
    assert [e["prompt"] for e in pref["evidence"]] == [e.prompt for e in rep.preference.evidence]


def test_the_base_read_and_the_margins_are_cached(pair, tok, tmp_path, monkeypatch):
    from neuronlens.pipeline import _preference  # the stage module, to count its reads

    reads = []
    monkeypatch.setattr(_preference, "reply_logprobs", lambda *a, **k: reads.append(1) or reply_logprobs(*a, **k))
    other = tiny.save(tiny.tiny_llama(tok, seed=4), tok, tmp_path / "other")

    def audit(ft):
        return alignment.compare_models(alignment.load_model(pair["base"]), alignment.load_model(ft), SAES,
                                        probes=["finance"], metrics=["drift"], config=CFG)

    first = audit(pair["ft"])
    assert len(reads) == 2  # the fine-tune's read and the base model's
    audit(other)
    assert len(reads) == 3  # another fine-tune of the same base: its own read only
    assert audit(pair["ft"]).preference == first.preference and len(reads) == 3  # the pair again: nothing read


def test_compare_many_reads_the_base_once(pair, tok, tmp_path, monkeypatch):
    from neuronlens.pipeline import _preference  # the stage module, to count its reads

    reads = []
    monkeypatch.setattr(_preference, "reply_logprobs", lambda *a, **k: reads.append(1) or reply_logprobs(*a, **k))
    other = tiny.save(tiny.tiny_llama(tok, seed=4), tok, tmp_path / "other")
    reps = alignment.compare_many(alignment.load_model(pair["base"]), [alignment.load_model(pair["ft"]), alignment.load_model(other)],
                                  SAES, probes=["finance"], metrics=["drift"], config=CFG)
    assert len(reads) == 3 and all(r.preference is not None for r in reps)  # two fine-tunes, one base read


def test_an_adapter_is_read_on_the_one_resident_base(pair, tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny.tiny_llama(tok)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    b = alignment.load_model(pair["base"])
    rep = alignment.compare_models(b, alignment.load_model(tmp_path / "adapter", base=b), SAES,
                                   probes=["finance"], metrics=["drift"], config=CFG)
    merged = peft_model.merge_and_unload().eval()
    pairs = PairSet.build(tok)
    want = margins(pairs, reply_logprobs(merged, pairs.seqs, tok.pad_token_id),
                   reply_logprobs(tiny.tiny_llama(tok).eval(), pairs.seqs, tok.pad_token_id))
    for c, w in zip(rep.preference.concepts, want.concepts):
        assert c.mean == pytest.approx(w.mean, abs=1e-5)


def test_no_preference_margins_leaves_them_out(pair):
    assert flags()["preference_margins"] == "--preference-margins"
    assert alignment.AuditConfig().preference_margins is False  # off by default: its cost (config.py)
    rep = alignment.compare_models(alignment.load_model(pair["base"]), alignment.load_model(pair["ft"]), SAES,
                                   probes=["finance"], metrics=["drift"], config=dataclasses.replace(CFG, preference_margins=False))
    assert rep.preference is None and "preference_s" not in rep.timings
    assert not any(x.startswith("Preference margins") for x in rep.summary().splitlines())
