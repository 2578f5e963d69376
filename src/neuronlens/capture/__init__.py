"""Stage 2 of the audit: run a model on token sequences and capture residual-stream activations."""

from ._collect import Collected, collect_activations
from ._hooks import residual_hooks, run_to_layers
from ._select import gather, massive_keep
from ._sequences import Batch, TokenSequence, code_chunk_tokens, make_batches, row_chunks

__all__ = [
    "Batch",
    "Collected",
    "TokenSequence",
    "code_chunk_tokens",
    "collect_activations",
    "gather",
    "make_batches",
    "massive_keep",
    "residual_hooks",
    "row_chunks",
    "run_to_layers",
]
