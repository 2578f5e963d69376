"""The public face of NeuronLens: load two checkpoints, attach SAEs, compare, report.

    base = load_model("smollm2-135m-instruct")
    ft = load_model("./checkpoints/my-finetune")          # folder, .gguf, PEFT adapter, hub id
    sae = load_sae(base, layers=[9, 15, 21])               # shipped, cached, loaded or trained
    report = compare_models(base_model=base, ft_model=ft, sae=sae, probes=["finance", "legal"])
    print(report.summary())
    report.top_features(layer=15, k=10)
"""

from __future__ import annotations

from ._pipeline import METRICS, compare_models
from .config import AuditConfig
from .models import ModelHandle, load_model
from .report import AuditReport, FeatureDrift, LayerDrift
from .saes import SAESet, SAETrainConfig, load_sae

__all__ = [
    "METRICS",
    "AuditConfig",
    "AuditReport",
    "FeatureDrift",
    "LayerDrift",
    "ModelHandle",
    "SAESet",
    "SAETrainConfig",
    "compare_models",
    "load_model",
    "load_sae",
]
