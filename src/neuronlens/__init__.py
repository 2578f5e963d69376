"""NeuronLens: a post-fine-tuning alignment audit for LLMs.

    from neuronlens import alignment
    base = alignment.load_model("smollm2-135m-instruct")
    ft = alignment.load_model("./my-finetune")
    report = alignment.compare_models(base_model=base, ft_model=ft, sae=alignment.load_sae(base))
    print(report.summary())
"""

__version__ = "0.1.0"

from . import alignment  # noqa: E402
from .errors import NeuronLensError  # noqa: E402

__all__ = ["NeuronLensError", "__version__", "alignment"]
