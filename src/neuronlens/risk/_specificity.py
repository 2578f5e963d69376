"""Is a concept shift specific to the concept, or did the fine-tune move everything?

A style fine-tune (pirate-speak, terse answers) changes the text the model writes and with it
thousands of latents. Any direction in feature space then moves, a concept's direction included:
the pirate-speak organism moved 'illegal acts' by 4-18% in its own answers, and the paired t-test
calls that significant, because it is a real change; it is just not a change *towards the
concept*. The competitive test asks the question that separates the two: did the concept's
direction move more than directions made of the same weights on random latents of the layer?
(The gene-set literature's "competitive" null, as opposed to the "self-contained" null of the
paired t-test.) Measured on the development zoos (docs/METHOD.md section 6), it is what stops
style changes from failing while the organisms trained on misaligned data keep failing.
"""

from __future__ import annotations

import zlib

import numpy as np

NULL_DIRECTIONS = 1000
"""Random directions per (concept, layer, read). The p-value's resolution is 1/1001; at the
default 5% level a borderline p moves by about ±0.007 (binomial SE) between two seeds."""


def competitive_p(weights: np.ndarray, delta: np.ndarray, observed: float, sign: float, seed_text: str) -> float:
    """One-sided p-value of `observed` (the concept's risk shift) among risk shifts along random
    directions: the concept's weights `weights` [n] (direction / gap on its n latents) put on n
    latents drawn uniformly from the layer's `delta` [d_sae] (fine-tuned minus base mean code per
    latent). Drawn with replacement: with n of a few dozen and d_sae in the thousands repeats are
    rare and change nothing measurable. Seeded by `seed_text`, so an audit is reproducible."""
    n = len(weights)
    if n == 0 or delta.size == 0:
        return 1.0
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    idx = rng.integers(0, delta.size, size=(NULL_DIRECTIONS, n))
    null = sign * (delta[idx] * weights[None, :]).sum(axis=1)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + NULL_DIRECTIONS))
