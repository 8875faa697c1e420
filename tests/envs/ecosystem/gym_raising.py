"""A gymnasium text env whose `step` raises on the action "raise"."""

import gymnasium


class RaisingText(gymnasium.Env):
    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return "say anything", {}

    def step(self, action):
        if action == "raise":
            raise KeyError("RaisingText was told to raise")
        return f"you said {action}", 0.0, False, False, {}
