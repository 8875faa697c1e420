"""On-device sampling with per-row temperature, top-k, top-p and seed.

The returned log-prob is the protocol's behavior log-prob (see
`agentic.inference.protocol`): `log_softmax(logits / temperature)[token]`
*before* top-k / top-p truncation (temperature 0 -> greedy, scored under
`log_softmax(logits)`), which is also what SGLang returns by default.

Randomness: the key for a row's k-th generated token is
`fold_in(PRNGKey(seed), k)`, so a request's samples depend only on its seed and
its own history, never on which other requests share the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _truncate(scaled, top_k, top_p):
    """Masks to -inf every logit outside the row's top-k, then outside its top-p nucleus."""
    V = scaled.shape[-1]
    srt = -jnp.sort(-scaled, axis=-1)  # descending
    k = jnp.where((top_k > 0) & (top_k < V), top_k, V)
    rank = jnp.arange(V)[None, :]
    srt_k = jnp.where(rank < k[:, None], srt, -jnp.inf)
    probs = jax.nn.softmax(srt_k, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly better tokens
    keep = (before < top_p[:, None]) & (rank < k[:, None])
    n_keep = jnp.maximum(jnp.sum(keep, axis=-1), 1)
    thresh = jnp.take_along_axis(srt, (n_keep - 1)[:, None], axis=-1)
    return jnp.where(scaled >= thresh, scaled, -jnp.inf)


def argmax(x):
    """jnp.argmax over the last axis (first index of the max), as int32.

    Written as a max and a min over matching indices: XLA's CPU backend runs the
    (value, index) pair reduction of `jnp.argmax` over a 49k vocab several times slower
    (it is on the decode step's critical path).
    """
    V = x.shape[-1]
    hit = x == jnp.max(x, axis=-1, keepdims=True)
    return jnp.minimum(jnp.min(jnp.where(hit, jnp.arange(V, dtype=jnp.int32), V), axis=-1), V - 1)


def sample(logits, temperature, top_k, top_p, seeds, steps):
    """Samples one token per row.

    Args:
      logits: float [B, V].
      temperature: float32 [B] (0 = greedy); top_k: int32 [B] (<= 0 = off);
      top_p: float32 [B]; seeds: int32 [B]; steps: int32 [B] (tokens generated so far).

    Returns:
      tokens int32 [B], logprobs float32 [B].
    """
    logits = logits.astype(jnp.float32)
    V = logits.shape[-1]
    greedy = temperature <= 0
    scaled = logits / jnp.where(greedy, 1.0, temperature)[:, None]
    logp = jax.nn.log_softmax(scaled, axis=-1)
    best = argmax(logits)

    def stochastic(_):
        need = jnp.any(~greedy & (((top_k > 0) & (top_k < V)) | (top_p < 1.0)))
        masked = jax.lax.cond(need, lambda x: _truncate(x, top_k, top_p), lambda x: x, scaled)
        keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.PRNGKey(s), c))(seeds, steps)
        gumbel = jax.vmap(lambda key: jax.random.gumbel(key, (V,), jnp.float32))(keys)
        drawn = argmax(masked + gumbel)
        return jnp.where(greedy, best, drawn)

    tokens = jax.lax.cond(jnp.all(greedy), lambda _: best, stochastic, None)
    lp = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return tokens, lp
