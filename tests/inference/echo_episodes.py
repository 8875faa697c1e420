"""Real multi-turn episodes for engine tests: an `Actor` runs 2 groups of 4 episodes of the echo
env (3 turns each, one task per prompt) against a generator and returns their groups."""

import asyncio

from agentic.rollout.actor import Actor, ActorConfig
from agentic.rollout.episode import EpisodeConfig
from envs.echo.env import EchoEnv


def run_echo_episodes(generator, tokenizer, episode: EpisodeConfig, instruction: str) -> list:
    """The groups of 2 tasks ("say hi", "say yo"), each prompt `instruction` + the words, 2 groups in flight."""
    groups = []

    async def sink(group):
        groups.append(group)

    async def make_env():
        return EchoEnv()

    cfg = ActorConfig(group_size=4, concurrent_groups=2, episode_timeout_s=300, episode=episode)
    tasks = [{"prompt": instruction + w, "turns": 3, "id": w} for w in ("say hi", "say yo")]
    actor = Actor(config=cfg, generator=generator, tokenizer=tokenizer, make_env=make_env, tasks=iter(tasks), sink=sink)
    asyncio.run(asyncio.wait_for(actor.run(), 300))
    return groups
