"""Stage 0 of the audit: the prompts both models read, and the responses they read them with."""

from ._chat import MAX_BATCH, cut_at_stop, generate_greedy, left_pad, length_batches, pad_id, prompt_ids, stop_ids
from ._length import CHARS_PER_TOKEN, checked_prompt_ids, context_length, handle_context
from ._responses import decode_response, response_sequences, responses_sha256, shard_indices
from ._sets import ProbeSet, builtin_names, load_probe_set

__all__ = [
    "CHARS_PER_TOKEN",
    "MAX_BATCH",
    "ProbeSet",
    "builtin_names",
    "checked_prompt_ids",
    "context_length",
    "cut_at_stop",
    "decode_response",
    "generate_greedy",
    "handle_context",
    "left_pad",
    "length_batches",
    "load_probe_set",
    "pad_id",
    "prompt_ids",
    "response_sequences",
    "responses_sha256",
    "shard_indices",
    "stop_ids",
]
