"""benchmarks/gpu_scale.py, the large-model run prepared for a GPU machine, runs end to end on CPU at
its tiny shape: every row is measured, the full-weight copy and the adapter both drift, and the
amplified read is timed against the own read (so the GPU session only has to run it)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_scale  # noqa: E402


def test_the_tiny_shape_runs_every_row(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path / "cache"))
    out = gpu_scale.main(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--d-sae", "64", "--max-prompts", "2",
                          "--max-new-tokens", "4", "--concepts", "misaligned_persona", "--work", str(tmp_path / "work"),
                          "--json", str(tmp_path / "out.json")])
    assert out["layers"] == [1, 2, 3] and out["floor"]["tokens"] > 0
    for row in ("audit_full", "audit_adapter"):
        assert set(out[row]["layer_drift"]) == {1, 2, 3} and all(d > 0 for d in out[row]["layer_drift"].values())
        assert math.isfinite(out[row]["x_floor"]) and out[row]["x_one_model"] >= 1.0
    assert out["amplified"]["amplified_pass_s"] > 0 and out["amplified"]["own_pass_s"] > 0
    assert (tmp_path / "out.json").is_file()
    again = gpu_scale.main(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--d-sae", "64", "--max-prompts", "2",
                            "--max-new-tokens", "4", "--concepts", "misaligned_persona", "--work", str(tmp_path / "work")])
    assert again["build_s"] < out["build_s"]  # the checkpoints are built once
