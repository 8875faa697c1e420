"""Top-k / top-p truncation (bisection on order keys) against a sort-based reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic.inference.sampling import _truncate


def sorted_reference(scaled, top_k, top_p):
    """The textbook definition: sort descending, keep the top k, then the best tokens while the
    mass of the better ones is < top_p (at least one); ties with the last kept value stay."""
    out = []
    for x, k, p in zip(scaled, top_k, top_p, strict=True):
        V = len(x)
        srt = -np.sort(-x)
        k = k if 0 < k < V else V
        n = k
        if p < 1.0:
            kept = srt[:k]
            e = np.exp(kept - kept.max())
            probs = e / e.sum()
            before = np.cumsum(probs) - probs
            n = max(int(np.sum(before < p)), 1)
        out.append(np.where(x >= srt[n - 1], x, -np.inf))
    return np.array(out)


@pytest.mark.parametrize("vocab", [7, 384, 5000])
def test_truncate_matches_sorting(vocab):
    rng = np.random.default_rng(vocab)
    truncate = jax.jit(_truncate)
    for trial in range(12):
        x = (rng.normal(size=(6, vocab)) * rng.uniform(0.1, 5)).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x, 1)  # many ties
        if trial % 4 == 0:
            x[0, : vocab // 2] = -np.inf  # already masked entries
        top_k = rng.integers(-1, vocab + 2, 6).astype(np.int32)
        top_k[1], top_k[2] = 1, 0
        top_p = rng.uniform(0, 1, 6).astype(np.float32)
        top_p[3], top_p[4] = 1.0, 0.0
        got = np.asarray(truncate(jnp.asarray(x), jnp.asarray(top_k), jnp.asarray(top_p)))
        want = sorted_reference(x, top_k, top_p)
        same = (got == want) | (np.isneginf(got) & np.isneginf(want))
        assert same.all(), f"trial {trial}: rows {np.where(~same.all(1))[0]} differ (k={top_k}, p={top_p})"
