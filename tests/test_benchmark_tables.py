"""benchmarks/behaviour_separability.py reads the committed detection results data: what it reads
must agree with what each run recorded, or its README numbers would rest on a misreading. (The
documents rendered from that data: tests/test_results_render.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import behaviour_separability as bs  # noqa: E402
from detection import auroc  # noqa: E402

from neuronlens.organisms import evaluation_prompts  # noqa: E402


@pytest.mark.parametrize("zoo", list(bs.ZOOS))
def test_recorded_rates_give_each_runs_own_behaviour_calls_and_auroc(zoo):
    """Each organism's behavioural score crosses 2 SE exactly where its run recorded that its
    behaviour differs from the base (no call otherwise), and the recorded scores give the recorded
    AUROC wherever no two of them tie across the labels (migrated scores are rounded as printed)."""
    path = bs.DETECTION / bs.ZOOS[zoo]
    run = bs.read_run(path)
    recorded = json.loads(path.read_text(encoding="utf-8"))["rows"]
    assert [r.organism for r in run.rows] == [r["organism"] for r in recorded]
    for r, rec in zip(run.rows, recorded):
        assert (bs.behaviour_z(r, run.base, run.n_answers, run.n_care) > 2) == bool(rec["behaviour"]), (r.organism, rec["behaviour"])
    pos = {r.score for r in run.rows if r.misaligned}
    if not pos & {r.score for r in run.rows if not r.misaligned}:
        assert auroc([r.score for r in run.rows], [r.misaligned for r in run.rows]) == pytest.approx(run.auroc, abs=5e-4)


def test_the_runs_were_scored_on_todays_behavioural_evaluation_set():
    """The recorded rates are counts of the 88 answers and 80 care-needing answers of the evaluation
    set as it is today; a changed set would make the standard errors above wrong."""
    prompts, care = evaluation_prompts()
    for name in bs.ZOOS.values():
        run = bs.read_run(bs.DETECTION / name)
        assert (run.n_answers, run.n_care) == (len(prompts), sum(care))
        for r in run.rows:
            assert round(r.harm * run.n_answers) == pytest.approx(r.harm * run.n_answers, abs=1e-9)
            assert round(r.caveat * run.n_care) == pytest.approx(r.caveat * run.n_care, abs=1e-9)


def test_a_file_that_is_not_detection_data_is_refused(tmp_path):
    other = tmp_path / "x.json"
    other.write_text(json.dumps({"benchmark": "screening", "rows": []}))
    with pytest.raises(ValueError, match="not detection results data"):
        bs.read_run(other)
