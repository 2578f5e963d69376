"""Stage 0 of the audit: the prompts both models read, and the responses they read them with."""

from ._chat import generate_greedy, prompt_ids, stop_ids
from ._length import CHARS_PER_TOKEN, checked_prompt_ids, context_length, handle_context
from ._responses import decode_response, response_sequences, responses_sha256, shard_indices
from ._sets import ProbeSet, builtin_names, load_probe_set

__all__ = [
    "CHARS_PER_TOKEN",
    "ProbeSet",
    "builtin_names",
    "checked_prompt_ids",
    "context_length",
    "decode_response",
    "generate_greedy",
    "handle_context",
    "load_probe_set",
    "prompt_ids",
    "response_sequences",
    "responses_sha256",
    "shard_indices",
    "stop_ids",
]
