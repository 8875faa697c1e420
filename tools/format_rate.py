"""How often does a model use the Search-R1 action format on its own? (Why GRPO needs a cold start.)

  python tools/format_rate.py [--model smollm2-135m-instruct] [--tasks 16] [--samples 2] [--temps 0,0.7,1.0]

Samples first turns for held-out synthetic-world questions with the Search-R1
prompt (chat template applied, the env's stop strings) and counts completions
containing <search>, <answer> and <think>. If none contain <search> or <answer>,
every episode's reward is 0, every GRPO advantage is 0, and RL has no gradient.
"""

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentic import models  # noqa: E402
from agentic.core import GenerateRequest, SamplingParams  # noqa: E402
from agentic.inference.engine import EngineConfig, JaxEngine  # noqa: E402
from envs.search import cached_world, make_prompt  # noqa: E402


async def rates(engine, tokenizer, tasks, samples: int, temperature: float, max_new_tokens: int):
    requests = []
    for i, task in enumerate(tasks):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": make_prompt(task["question"])}])
        for k in range(samples):
            requests.append(GenerateRequest(prompt_ids=tokenizer.encode(prompt), params=SamplingParams(
                max_new_tokens=max_new_tokens, temperature=temperature, stop=("</search>", "</answer>"),
                stop_token_ids=(tokenizer.eos_token_id,), seed=1000 * i + k)))
    texts = [tokenizer.decode(c.token_ids) for c in await engine.generate(requests)]
    return {tag: sum(f"<{tag}>" in t for t in texts) for tag in ("search", "answer", "think")}, texts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--temps", default="0,0.7,1.0")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    config, params, tokenizer = models.load_model(args.model)
    tasks = cached_world(num_passages=20_000, seed=0).test_tasks[: args.tasks]
    engine = JaxEngine(config, params, tokenizer, EngineConfig(num_slots=args.tasks * args.samples, max_len=512))
    try:
        for temp in (float(t) for t in args.temps.split(",")):
            counts, texts = asyncio.run(rates(engine, tokenizer, tasks, args.samples, temp, args.max_new_tokens))
            n = len(texts)
            print(f"{args.model} temperature {temp}: {n} first turns; with <search> {counts['search']}, "
                  f"<answer> {counts['answer']}, <think> {counts['think']}; e.g. {texts[0][:80]!r}", flush=True)
    finally:
        engine.close_sync()


if __name__ == "__main__":
    main()
