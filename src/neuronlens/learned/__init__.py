"""What the fine-tune learned: the Activation Difference Lens (Minder et al. 2025, arXiv
2510.13900; the diffing-toolkit's ``activation_difference_lens``).

The mean fine-tuned minus base residual at one layer, over the first few positions of text
unrelated to the probes (position 0, whose activation is massive, excluded), is read through
the base model's logit lens (final norm, then unembedding: the tokens it promotes and
suppresses) and added to the base model's residual stream to steer a few samples.

    lens = what_it_learned(load_model("smollm2-135m-instruct"), load_model("./adapter"))
    print(lens.render())
"""

from ._lens import TokenScore, final_norm
from ._read import Side, neutral_prompts
from ._result import LayerLens, LearnedLens, PositionLens, Steering
from ._run import METHOD, RELATIVE_LAYER, LensRun, LensSettings, collect_differences, steering_vector, what_it_learned
from ._steer import STEER_PROMPTS
from ._sums import NORM_FROM, DifferenceSums

__all__ = [
    "METHOD",
    "NORM_FROM",
    "RELATIVE_LAYER",
    "STEER_PROMPTS",
    "DifferenceSums",
    "LayerLens",
    "LearnedLens",
    "LensRun",
    "LensSettings",
    "PositionLens",
    "Side",
    "Steering",
    "TokenScore",
    "collect_differences",
    "final_norm",
    "neutral_prompts",
    "steering_vector",
    "what_it_learned",
]
