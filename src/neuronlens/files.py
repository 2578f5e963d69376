"""File helpers for scripts built on NeuronLens (benchmarks, notebooks), the ones the library uses
itself: whole-file atomic writes (a reader sees the old file or the new one, never half of one; a
failed write leaves the old file) and the folder NeuronLens caches in ($NEURONLENS_CACHE, else
$XDG_CACHE_HOME/neuronlens, else ~/.cache/neuronlens)."""

from ._cache import cache_root
from ._io import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["cache_root", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
