"""Cold-start demonstrations: a scripted policy through the real actor loop and search env,
then SFT (policy loss "nll") on them lowers their negative log-likelihood."""

import asyncio

import numpy as np

from agentic import models
from agentic.learner.learner import Learner, LearnerConfig
from agentic.rollout.actor import Actor, ActorConfig
from agentic.rollout.episode import EpisodeConfig
from agentic.rollout.scripted import ScriptedGenerator
from envs.search import make_env
from envs.search.policies import policy_for_prompt
from envs.search.world import build_world


def test_scripted_demonstrations_train_with_nll(tmp_path):
    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    world = build_world(num_passages=200, seed=0)
    tasks = world.train_tasks[:6]
    groups = []

    async def sink(group):
        groups.append(group)

    async def new_env():
        return make_env(world_passages=200, world_seed=0, cache_dir=str(tmp_path))

    actor = Actor(config=ActorConfig(group_size=1, concurrent_groups=3,
                                     episode=EpisodeConfig(max_turns=4, max_new_tokens_per_turn=256,
                                                           max_total_tokens=2048)),
                  generator=ScriptedGenerator(tokenizer, policy_for_prompt(world.train_tasks)), tokenizer=tokenizer,
                  make_env=new_env, tasks=iter(tasks), sink=sink)
    asyncio.run(asyncio.wait_for(actor.run(), 120))
    demos = [t for g in groups for t in g]
    assert len(demos) == len(tasks)
    assert all(t.metrics["em"] == 1.0 and t.reward == 1.0 for t in demos)
    for t in demos:  # actions are model tokens (mask 1), observations are not
        text = tokenizer.decode(t.tokens[t.loss_mask == 1].tolist())
        assert "<search>" in text and "<answer>" in text and "<information>" not in text
        assert t.metrics["search_calls"] == t.metrics["turns"] - 1

    cfg = models.get_config("tiny").replace(vocab_size=tokenizer.vocab_size)
    sft = Learner(LearnerConfig(policy_loss="nll", off_policy="none", lr=3e-3, micro_batch_size=8,
                                seq_buckets=(1024,), mesh_shape=(1, 1, 1)), cfg)
    losses = [sft.update(demos)["learner/loss"] for _ in range(3)]
    assert losses[-1] < losses[0] - 0.5, losses
    assert np.isfinite(losses).all()
