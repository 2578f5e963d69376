"""Stage 0 of the audit: the prompts both models read, and the responses they read them with."""

from ._chat import generate_greedy, prompt_ids, stop_ids
from ._responses import decode_response, response_sequences, shard_indices
from ._sets import ProbeSet, builtin_names, load_probe_set

__all__ = [
    "ProbeSet",
    "builtin_names",
    "decode_response",
    "generate_greedy",
    "load_probe_set",
    "prompt_ids",
    "response_sequences",
    "shard_indices",
    "stop_ids",
]
