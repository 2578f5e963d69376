"""Wrapping a model in a PEFT adapter without a third-party deprecation warning on every audit.

peft's ``PeftModel.__init__`` (peft 0.21, reached from ``PeftModel.from_pretrained`` and
``get_peft_model``) reads ``model.is_gradient_checkpointing``, a property transformers 5 deprecated
in favour of ``is_activation_checkpointing``; each read emits a FutureWarning that the user cannot
act on. Only that warning, and only around NeuronLens's own wrap calls, is silenced: nothing is
filtered globally, and every other warning still reaches the user.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

CHECKPOINTING_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"
"""Start of transformers' FutureWarning text (modeling_utils.PreTrainedModel.is_gradient_checkpointing)."""


@contextmanager
def peft_wrap_quietly() -> Iterator[None]:
    """Run a PEFT wrap (``PeftModel.from_pretrained``, ``get_peft_model``) without the
    ``is_gradient_checkpointing`` FutureWarning that peft's own code triggers in transformers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CHECKPOINTING_DEPRECATION, category=FutureWarning)
        yield
