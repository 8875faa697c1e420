"""A TextArena game (a `textarena.Env`) whose `step` raises on the action "raise"."""

import textarena as ta


class RaisingGame(ta.Env):
    def reset(self, num_players, seed=None):
        self.state = ta.State(num_players=num_players, seed=seed)
        self.state.standard_resets(game_state={}, player_prompt_function=lambda player_id, game_state: "Say a word.")

    def step(self, action):
        if action == "raise":
            raise IndexError("RaisingGame was told to raise")
        self.state.add_observation(message=action, observation_type=ta.ObservationType.PLAYER_ACTION,
                                   from_id=self.state.current_player_id)
        return self.state.step()
