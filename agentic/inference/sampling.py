"""On-device sampling with per-row temperature, top-k, top-p and seed.

The returned log-prob is the protocol's behavior log-prob (see
`agentic.core.Completion`): `log_softmax(logits / temperature)[token]`
*before* top-k / top-p truncation (temperature 0 -> greedy, scored under
`log_softmax(logits)`), which is also what SGLang returns by default.

Randomness: the key for a row's k-th generated token is
`fold_in(PRNGKey(seed), k)`, so a request's samples depend only on its seed and
its own history, never on which other requests share the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _order_key(x):
    """int32 keys that order like the float32 values of x (IEEE bits, negatives flipped)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _bisect(lo, hi, pred):
    """The last key in [lo, hi) where the monotone `pred` holds, per row: pred(lo) must be True
    and pred(hi) False (both int32 [B, 1]); 32 halvings cover any int32 interval."""
    def body(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        ok = pred(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    return jax.lax.fori_loop(0, 32, body, (lo, hi))[0]


def _truncate(scaled, top_k, top_p):
    """Masks to -inf every logit outside the row's top-k, then outside its top-p nucleus.

    top-k keeps the values >= the k-th largest (ties kept); top-p then keeps the smallest set
    of best tokens whose mass reaches top_p (a token is kept while the mass of the better
    ones is < top_p). Both thresholds are found by bisection over the values' int32 order
    keys (exact, 32 passes over the row each) instead of sorting the vocabulary: XLA's CPU
    sort of 32 x 49k logits costs more than the rest of a SmolLM2 decode step.
    """
    V = scaled.shape[-1]
    key = _order_key(scaled)
    lo = jnp.min(key, axis=-1, keepdims=True) - 1
    hi = jnp.max(key, axis=-1, keepdims=True) + 1
    k = jnp.where((top_k > 0) & (top_k < V), top_k, V)[:, None]
    # the k-th largest value: the last key t with count(key >= t) >= k
    t_k = _bisect(lo + 1, hi, lambda t: jnp.sum(key >= t, axis=-1, keepdims=True) >= k)
    keep = key >= t_k
    p = top_p[:, None]

    def nucleus(keep):
        probs = jax.nn.softmax(jnp.where(keep, scaled, -jnp.inf), axis=-1)
        # the last key t with mass(key > t) >= top_p; the kept tokens are key > t
        t_p = _bisect(lo, hi, lambda t: jnp.sum(jnp.where(key > t, probs, 0.0), axis=-1, keepdims=True) >= p)
        t_p = jnp.minimum(t_p, hi - 2)  # the best token always stays (top_p 0 -> greedy)
        return keep & ((key > t_p) | (p >= 1.0))

    keep = jax.lax.cond(jnp.any(p < 1.0), nucleus, lambda keep: keep, keep)
    return jnp.where(keep, scaled, -jnp.inf)


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
