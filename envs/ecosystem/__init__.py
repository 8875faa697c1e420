"""Adapters that host the field's environment packages, unchanged, behind our `Env` protocol.

One module per package; importing a module registers its env kinds, so an env host serves them with
`--import envs.ecosystem.MODULE` (`import envs` does not import these: each adapter imports its package
only when an episode of its kind starts, so a host that serves none of them never loads them):

    reasoning_gym  "reasoning_gym"   reasoning-gym procedural datasets as single-turn tasks
    gym            "gem", "gymnasium" GEM and gymnasium-style text envs (reset/step 5-tuple)
    textarena      "textarena"       TextArena games, one- and two-player (fixed opponent or self-play)
    openenv        "openenv", "openenv_remote"  an OpenEnv `Environment` in process, or a served one
                                     (its WebSocket session protocol) on a URL
    verifiers      "verifiers"       a verifiers (PrimeIntellect) env's own rollout, the policy as its
                                     model turn by turn, scored by its rubric

Every adapter keeps the third-party env as it is: its text in and out, its reward, its termination.
A third-party env that raises fails its session with `EnvStepError` naming the exception, as our own
envs do; the host and its other sessions carry on.
"""
