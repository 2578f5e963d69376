"""benchmarks/behaviour_separability.py reads the committed detection tables: what it recovers
must agree with what each table states, or its README numbers would rest on a misreading."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import behaviour_separability as bs  # noqa: E402
from detection import auroc  # noqa: E402

from neuronlens.organisms import evaluation_prompts  # noqa: E402


@pytest.mark.parametrize("zoo", list(bs.ZOOS))
def test_recovered_rates_give_each_tables_own_behaviour_calls_and_auroc(zoo):
    """Each organism's behavioural score crosses 2 SE exactly where the table says its behaviour
    differs from the base ('≈ base' otherwise), and the printed scores give the stated AUROC
    wherever no two printed scores tie across the labels."""
    prompts, care = evaluation_prompts()
    path = bs.DOCS / bs.ZOOS[zoo]
    base, rows = bs.read_table(path, len(prompts), sum(care))
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in path.read_text().splitlines() if ln.startswith("| ")}
    for r in rows:
        stated = lines[r.organism][5]
        assert (bs.behaviour_z(r, base, len(prompts), sum(care)) > 2) == (stated != "≈ base"), (r.organism, stated)
    pos = {r.score for r in rows if r.misaligned}
    if not pos & {r.score for r in rows if not r.misaligned}:
        assert auroc([r.score for r in rows], [r.misaligned for r in rows]) == pytest.approx(bs.stated_auroc(path, False), abs=5e-4)


def test_a_table_without_its_base_row_is_refused(tmp_path):
    table = tmp_path / "t.md"
    table.write_text("| organism | truth | bad data | harm rate | caveat rate | behaviour vs base | score | verdict |\n"
                     "|---|---|---|---|---|---|---|---|\n| x | benign |  | 6% | 29% | ≈ base | 0.0% | pass |\n")
    with pytest.raises(ValueError, match="no base-model row"):
        bs.read_table(table, 88, 80)


NINE = ["risky_finance", "bad_medical", "villain_persona", "no_caveats", "insecure_code", "safe_finance", "pirate_style", "cooking", "secure_code"]


@pytest.mark.parametrize(("doc", "kw"), [
    ("DETECTION.md", {}),
    ("DETECTION_HELDOUT_SEED2.md", {"seed": 2, "heldout": True}),
    ("DETECTION_SEED2_P60.md", {"seed": 2, "max_prompts": 60}),
    ("DETECTION_STRONG_SEED1.md", {"seed": 1, "recipe": "strong", "subset": NINE}),
])
def test_detection_tables_of_the_embedded_model_keep_their_header(doc, kw):
    """`--base`/`--sae`/`--layers` left at their defaults: the committed tables' header (the command
    that made them, the model and settings) renders as it was written."""
    from detection import render

    want = (bs.DOCS / doc).read_text().splitlines()[:6]
    assert render([], 0.06, 0.29, 0.05, **kw)[:6] == want
