"""File helpers for scripts built on NeuronLens (benchmarks, notebooks), the ones the library uses
itself: whole-file atomic writes (a reader sees the old file or the new one, never half of one; a
failed write leaves the old file) and the folder NeuronLens caches in ($NEURONLENS_CACHE, else
$XDG_CACHE_HOME/neuronlens, else ~/.cache/neuronlens) with its keyed entries: ``store_json_entry`` /
``store_tensor_entry`` write an entry under a kind and a key (a dict of everything it depends on),
``load_json_entry`` / ``load_tensor_entry`` read it back, or None when absent, corrupt or of
another format version (it is then rebuilt, never trusted)."""

from ._cache import cache_root, load_json_entry, load_tensor_entry, store_json_entry, store_tensor_entry
from ._io import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["cache_root", "load_json_entry", "load_tensor_entry", "store_json_entry", "store_tensor_entry", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
