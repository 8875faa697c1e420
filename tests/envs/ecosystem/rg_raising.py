"""A reasoning-gym dataset, registered in reasoning-gym's own registry, whose `score_answer` raises."""

import dataclasses

import reasoning_gym
from reasoning_gym.dataset import ProceduralDataset


@dataclasses.dataclass
class RaisingConfig:
    seed: int | None = None
    size: int = 10


class RaisingDataset(ProceduralDataset):
    def __init__(self, config: RaisingConfig):
        super().__init__(config=config, seed=config.seed, size=config.size)

    def __getitem__(self, idx: int) -> dict:
        return {"question": f"What is {idx} / 0?", "answer": "undefined", "metadata": {}}

    def score_answer(self, answer, entry) -> float:
        return 1 / 0


if "raising_division" not in reasoning_gym.factory.DATASETS:
    reasoning_gym.register_dataset("raising_division", RaisingDataset, RaisingConfig)
