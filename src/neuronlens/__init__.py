"""NeuronLens: a post-fine-tuning alignment audit for LLMs.

    from neuronlens import alignment
    base = alignment.load_model("smollm2-135m-instruct")
    ft = alignment.load_model("./my-finetune")
    report = alignment.compare_models(base_model=base, ft_model=ft, sae=alignment.load_sae(base))
    print(report.summary())
"""

from ._version import __version__
from . import alignment
from .errors import NeuronLensError

__all__ = ["NeuronLensError", "__version__", "alignment"]
