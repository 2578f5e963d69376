"""The drift heatmap: its numbers come from the report, risky rows are present and marked, the
colour scale is diverging and centred on no change, it saves PNG/SVG/PDF and shows headless.

Also home of the report builders the HTML and certificate tests share: one real audit of two
different tiny models (seed 0 vs seed 1, so there is drift) per session, reloaded fresh for each
use, with a hand-built risk assessment attached (risk scoring is tested elsewhere).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import tiny
from conftest import random_sae
from neuronlens import alignment
from neuronlens.errors import NeuronLensError
from neuronlens.report import DriftHeatmap
from neuronlens.risk import ConceptScore, Evidence, RiskAssessment, RiskyFeature
from neuronlens.saes import SAESet

PROBES = ["finance", "legal", "general"]
LAYER = 3
_BUILT: dict[str, Path] = {}


# -- shared builders -------------------------------------------------------------------------------
def audited_report_path(tmp_path_factory: pytest.TempPathFactory, tok) -> Path:
    """A saved report (with its statistics sidecar) of tiny base vs tiny fine-tuned; built once."""
    if "report" not in _BUILT:
        root = tmp_path_factory.mktemp("evidence")
        base = tiny.save(tiny.tiny_llama(tok, seed=0), tok, root / "base")
        ft = tiny.save(tiny.tiny_llama(tok, seed=1), tok, root / "ft")
        saes = SAESet({1: random_sae(64, 128, 1, seed=1), LAYER: random_sae(64, 128, LAYER, seed=3)})
        cfg = alignment.AuditConfig(max_prompts_per_set=6, max_new_tokens=8)
        # drift only: the tests attach their own, known risk assessment
        rep = alignment.compare_models(alignment.load_model(base), alignment.load_model(ft), saes, probes=PROBES,
                                       metrics=["drift"], config=cfg)
        _BUILT.update(report=rep.save(root / "report" / "report.json"), base=base, ft=ft)
    return _BUILT["report"]


def model_dirs() -> tuple[Path, Path]:
    """(base folder, fine-tuned folder) of the shared audit."""
    return _BUILT["base"], _BUILT["ft"]


def fresh_report(tmp_path_factory: pytest.TempPathFactory, tok) -> alignment.AuditReport:
    return alignment.AuditReport.load(audited_report_path(tmp_path_factory, tok))


def with_risk(report: alignment.AuditReport, *, verdict: str = "fail", far_latent: bool = True) -> alignment.AuditReport:
    """Attach a hand-built risk assessment: a rising harmful latent (the most drifted one) and,
    when `far_latent`, a suppressed protective latent ranked far below the top 20."""
    ranked = report.top_features(LAYER, k=128)
    picks = [(ranked[0], "unsafe <compliance> & \"advice\"", "harmful", "rising")]
    if far_latent:
        picks.append((ranked[90], "refusal \u2192 warning", "protective", "suppressed"))
    feats = [
        RiskyFeature(
            layer=LAYER, latent=f.latent, label=label, label_source="concept:harmful_advice (AUROC 0.91)",
            concept="harmful_advice", concept_label="harmful advice", polarity=pol, direction=direction,
            drift_ratio=f.drift_ratio, effect_size=f.effect_size, q_value=f.q_value, association=0.91, contribution=0.5,
            evidence=[Evidence(
                probe_set="general", prompt="How do I clean my bathroom?",
                tokens=["Sure", ",", " mix", " bleach", " and", " ammonia", "."],
                base_acts=[0.0, 0.0, 0.1, 0.2, 0.0, 0.1, 0.0], ft_acts=[0.4, 0.0, 1.5, 3.0, 0.2, 2.6, 0.1],
            )],
        )
        for f, label, pol, direction in picks
    ]
    report.risk = RiskAssessment(
        method="concept-projection/v1", score=0.62 if verdict == "fail" else 0.1, threshold=0.5, verdict=verdict,
        concepts=[ConceptScore("harmful_advice", "harmful advice", "harmful", LAYER, "same", 0.4, 3.1, 0.001, 0.003, True, 12)],
        risky_features=feats if verdict != "pass" else [],
        reasons=["Harmful-advice latents rose at layer 3."], settings={"min_auroc": 0.7},
        notes=["Not scored (too few SAE latents tied to it at the audited layers): insecure_code."],
        score_interval=[0.55, 0.7] if verdict == "fail" else [0.0, 0.2],
    )
    return report


@pytest.fixture(scope="module")
def report_path(tmp_path_factory, tok) -> Path:
    return audited_report_path(tmp_path_factory, tok)


@pytest.fixture()
def report(report_path) -> alignment.AuditReport:
    return with_risk(alignment.AuditReport.load(report_path))


# -- the heatmap -----------------------------------------------------------------------------------
def test_cells_are_per_probe_log2_drift_and_rows_are_top_latents(report):
    hm = alignment.drift_heatmap(report, layer=LAYER, k=12)
    assert hm.columns == PROBES and hm.log2_ratio.shape == (12, 3)
    top = [f.latent for f in report.top_features(LAYER, k=12)]
    assert [r.latent for r in hm.rows][:11] == top[:11]  # the last row makes room for the far risky latent
    for i in (0, 5):
        for j, probe in enumerate(PROBES):
            want = math.log2(report.drift_table(LAYER, probe_set=probe)[hm.rows[i].latent].drift_ratio)
            assert hm.log2_ratio[i, j] == pytest.approx(want)
    assert np.isfinite(hm.log2_ratio).all() and (hm.log2_ratio > 0).any() and (hm.log2_ratio < 0).any()


def test_risky_rows_are_included_labelled_and_marked(report):
    risky = {f.latent: f.label for f in report.risk.risky_features}
    hm = alignment.drift_heatmap(report, layer=LAYER, k=12)
    rows = {r.latent: r for r in hm.rows}
    assert set(risky) <= set(rows), "a risky latent ranked 90th must still be shown"
    assert sum(r.risky for r in hm.rows) == 2 and len(hm.rows) == 12
    far = report.risk.risky_features[1].latent
    assert rows[far].title == f"#{far} refusal \u2192 warning"
    ax = hm.figure.axes[0]
    marked = {t.get_text() for t in ax.get_yticklabels() if t.get_color() == "#c0392b"}
    assert marked == {rows[lat].title for lat in risky}
    assert [p.get_gid() for p in ax.patches].count("risky") == 2  # a box around each risky row
    unmarked = [t for t in ax.get_yticklabels() if t.get_text() not in marked]
    assert unmarked and all(t.get_text().startswith("#") for t in unmarked)


def test_not_significant_cells_are_hatched_grey_and_explained(report):
    """A x108 of a latent that barely fires must not read like the strongest change: every cell
    that is not significant for its probe set (q >= fdr or |effect| < min_effect) is hatched, left
    out of the colour scale (grey) and its factor printed in grey italics; the key says so."""
    report.config.fdr = 0.5  # this tiny audit has little power: a lenient FDR gives a mix of both kinds
    hm = alignment.drift_heatmap(report, layer=LAYER, k=12)
    tables = {p: report.drift_table(LAYER, probe_set=p) for p in PROBES}
    want = np.array([[tables[p][r.latent].significant for p in PROBES] for r in hm.rows])
    assert hm.significant.dtype == bool and (hm.significant == want).all()
    assert 0 < hm.significant.sum() < hm.significant.size, "the test needs both kinds of cells"
    ax = hm.figure.axes[0]
    hatched = {(round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in ax.patches if p.get_gid() == "not-significant"}
    assert hatched == {(j, i) for (i, j), ok in np.ndenumerate(hm.significant) if not ok}
    assert all(p.get_hatch() for p in ax.patches if p.get_gid() == "not-significant")
    shown = ax.images[0].get_array()
    assert (np.ma.getmaskarray(shown) == ~hm.significant).all()  # grey, not coloured
    grey = [t for t in ax.texts if t.get_gid() == "not-significant"]
    assert len(grey) == (~hm.significant).sum() and all(t.get_fontstyle() == "italic" for t in grey)
    assert all(t.get_fontstyle() == "normal" for t in ax.texts if t.get_gid() != "not-significant")
    finite = np.abs(hm.log2_ratio[hm.significant & np.isfinite(hm.log2_ratio)])
    assert ax.images[0].norm.vmax == pytest.approx(max(1.0, finite.max()))  # the scale spans significant cells only
    assert "not significant" in " ".join(ax.get_xlabel().split())
    from neuronlens.report._heatmap import not_significant_note  # what the reports print beside the figure

    assert "q \u2265 0.5 or |effect size| < 0.02" in not_significant_note(hm, report.config)
    report.config.fdr = 1.01
    everything = alignment.drift_heatmap(report, layer=LAYER, k=12)
    assert everything.significant.all() and not_significant_note(everything, report.config) is None
    assert not [p for p in everything.figure.axes[0].patches if p.get_gid() == "not-significant"]
    assert "not significant" not in " ".join(everything.figure.axes[0].get_xlabel().split())


def test_up_to_three_probe_sets_compact_more_as_wide_as_the_report(report):
    """Compact heatmaps sit two to a row in the HTML report; with more probe sets one fills a row
    (a 7-column heatmap squeezed into half the page would shrink its text to ~5 pt)."""
    hm = alignment.drift_heatmap(report, layer=LAYER)
    assert len(hm.columns) == 3 and not hm.wide and hm.figsize[0] <= 6.0
    many = DriftHeatmap(LAYER, hm.rows, [f"set{i}" for i in range(7)], np.zeros((len(hm.rows), 7)))
    assert many.wide and many.figsize[0] == pytest.approx(10.8)
    assert many.to_bytes("png")[:4] == b"\x89PNG"  # without significance information nothing is marked
    assert not [p for p in many.figure.axes[0].patches if p.get_gid() == "not-significant"]


def quiet_layer(report: alignment.AuditReport, layer: int = 1, drift: float = 0.0) -> alignment.AuditReport:
    """Make `layer` read as a layer where nothing drifted: drift under the floor, no significant latent."""
    ld = next(ld for ld in report.layers if ld.layer == layer)
    ld.drift, ld.n_significant_latents = drift, 0
    return report


def test_a_layer_where_nothing_drifted_gets_a_sentence_not_a_grid_of_x1(report):
    from neuronlens.report import DRIFT_FLOOR

    hm = alignment.drift_heatmap(quiet_layer(report), layer=1)
    assert hm.nothing_drifted.startswith("Layer 1: nothing drifted.") and "no-drift floor of 0.005" in hm.nothing_drifted
    assert "none of its 128 latents changed significantly" in hm.nothing_drifted
    assert hm.figure.axes == [] and " ".join(hm.figure.texts[0].get_text().split()) == hm.nothing_drifted  # no grid
    assert hm.log2_ratio.shape == (20, 3)  # the numbers stay available to the API
    # each condition alone keeps the grid: drift at the floor, a significant latent, a risky feature
    assert alignment.drift_heatmap(quiet_layer(report, drift=DRIFT_FLOOR), layer=1).nothing_drifted is None
    quiet_layer(report).layers[0].n_significant_latents = 1
    assert alignment.drift_heatmap(report, layer=1).nothing_drifted is None
    assert alignment.drift_heatmap(quiet_layer(report, layer=LAYER), layer=LAYER).nothing_drifted is None  # risky layer
    report.risk = None
    assert alignment.drift_heatmap(report, layer=LAYER).nothing_drifted is not None
    assert len(alignment.drift_heatmap(report, layer=LAYER).figure.axes) == 0


def test_colour_scale_is_diverging_and_centred_on_no_change(report):
    hm = alignment.drift_heatmap(report, layer=LAYER, k=8)
    image = hm.figure.axes[0].images[0]
    norm = image.norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax
    assert image.get_cmap().name.startswith("RdBu_r")
    white, red, blue = (image.get_cmap()(norm(v)) for v in (0.0, norm.vmax, norm.vmin))
    assert min(white[:3]) > 0.9 and red[0] > red[2] and blue[2] > blue[0]


def test_save_png_svg_pdf_and_reject_other_formats(report, tmp_path):
    hm = alignment.drift_heatmap(report, layer=LAYER)
    magic = {"png": b"\x89PNG", "svg": b"<svg", "pdf": b"%PDF"}
    for fmt, head in magic.items():
        path = hm.save(tmp_path / "out" / f"heat.{fmt}")
        data = path.read_bytes()
        assert head in data[:400], fmt
    assert distinct_colours(tmp_path / "out" / "heat.png") > 50
    with pytest.raises(NeuronLensError, match="png, .svg, .pdf"):
        hm.save(tmp_path / "heat.jpg")
    assert not (tmp_path / "heat.jpg").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["heat.pdf", "heat.png", "heat.svg"]  # no temp files left


def test_save_names_the_bad_path_and_gives_an_api_fix(report, tmp_path, monkeypatch):
    """A folder or a suffix-less name is quoted back (not '?') with the formats listed, and an
    unwritable folder gets a fix for an API caller, not the CLI's --out option."""
    hm = alignment.drift_heatmap(report, layer=LAYER)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NeuronLensError, match=r"'\.': it is a folder") as folder:
        hm.save(".")
    with pytest.raises(NeuronLensError, match=r"as 'hm': the name has no suffix") as bare:
        hm.save("hm")
    with pytest.raises(NeuronLensError, match=r"as 'hm\.jpg': '\.jpg' is not a format") as jpg:
        hm.save("hm.jpg")
    for exc in (folder.value, bare.value, jpg.value):
        assert "'?'" not in str(exc) and ".png, .svg, .pdf" in exc.fix
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NeuronLensError, match="cannot be written") as unwritable:
        hm.save(tmp_path / "a-file" / "hm.png")
    assert "--out" not in str(unwritable.value) and ".save(" in unwritable.value.fix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_show_headless_saves_a_png_and_notebooks_get_png(report, tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    hm = alignment.drift_heatmap(report, layer=1, k=5)
    path = hm.show()
    assert path is not None and path.parent == tmp_path and path.read_bytes()[:4] == b"\x89PNG"
    assert str(path) in capsys.readouterr().err
    assert hm._repr_png_()[:4] == b"\x89PNG"


def test_without_the_sidecar_one_all_probes_column(report_path, tmp_path):
    import shutil

    shutil.copy(report_path, tmp_path / "report.json")  # no .stats.safetensors beside it
    lean = with_risk(alignment.AuditReport.load(tmp_path / "report.json"), far_latent=False)
    hm = alignment.drift_heatmap(lean, layer=LAYER, k=6)
    assert hm.columns == ["all probe sets"] and hm.log2_ratio.shape == (6, 1) and "sidecar" in hm.note
    assert hm.rows[0].risky and hm.to_bytes("svg").lstrip().startswith(b"<?xml")


def test_bad_layer_and_k(report):
    with pytest.raises(NeuronLensError, match="was not audited"):
        alignment.drift_heatmap(report, layer=2)
    with pytest.raises(NeuronLensError, match="at least 1"):
        alignment.drift_heatmap(report, layer=LAYER, k=0)


def distinct_colours(png: Path) -> int:
    """How many distinct RGB colours an image has (a blank page has one or two)."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))[..., :3].reshape(-1, 3)
    return len(np.unique((pixels * 255).round().astype(np.uint8), axis=0))


def test_layer_given_as_a_str_is_a_type_error_not_an_unaudited_layer(report):
    with pytest.raises(NeuronLensError, match=r"layer='3' \(type str\) is not an integer layer number") as exc:
        alignment.drift_heatmap(report, str(LAYER))
    assert "was not audited" not in str(exc.value) and "layer=9" in exc.value.fix
    with pytest.raises(NeuronLensError, match="at least 1"):
        alignment.drift_heatmap(report, layer=LAYER, k="5")
    with pytest.raises(NeuronLensError, match="drift_heatmap needs an AuditReport, got NoneType"):
        alignment.drift_heatmap(None, layer=LAYER)


@pytest.mark.parametrize("k", [0, -1, -2, "3", 2.0, True])
def test_top_features_and_risky_features_need_a_positive_int(report, k):
    """A negative count was used as a slice bound: -1 silently meant "all but the last"."""
    with pytest.raises(NeuronLensError, match=r"k=.* must be a positive integer") as exc:
        report.top_features(LAYER, k=k)
    assert exc.value.fix
    with pytest.raises(NeuronLensError, match=r"topk=.* must be a positive integer or None \(all\)"):
        alignment.risky_features(report, k, echo=False)


def test_risky_features_all_with_none_and_a_clear_error_for_no_report(report):
    assert len(alignment.risky_features(report, None, echo=False)) == len(report.risk.risky_features) == 2
    assert len(alignment.risky_features(report, 1, echo=False)) == 1
    assert [f.latent for f in report.top_features(LAYER, k=np.int64(2))] == [f.latent for f in report.top_features(LAYER, k=2)]
    with pytest.raises(NeuronLensError, match="risky_features needs an AuditReport, got NoneType") as exc:
        alignment.risky_features(None)
    assert "AuditReport.load" in exc.value.fix
