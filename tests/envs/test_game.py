"""Wordle over the generated word list, and the scripted player that should win it."""

import asyncio

from envs.game.player import WordlePlayer, play_transcript
from envs.game.wordle import WordleEnv, feedback, parse_guess
from envs.game.words import word_list


def test_word_list_is_deterministic_and_five_letters():
    words = word_list(500, seed=3)
    assert words == word_list(500, seed=3) and len(set(words)) == 500
    assert all(len(w) == 5 and w.isalpha() and w.islower() for w in words)
    assert words != word_list(500, seed=4)


def test_feedback_handles_repeated_letters_like_wordle():
    assert feedback("crane", "crane") == "GGGGG"
    assert feedback("speed", "abide") == "__Y_Y"  # only one 'e' in the secret: one Y
    assert feedback("aabbb", "ababa") == "GYYG_"
    assert parse_guess("I think <guess> Crane </guess>") == "crane" and parse_guess("hello there") is None


def play(index, actions=None):
    async def episode():
        env = WordleEnv()
        obs = await env.reset({"index": index})
        player, text, steps = WordlePlayer(env.words), obs.text, []
        while True:
            step = await env.step(actions.pop(0) if actions else player.act(text))
            steps.append(step)
            text = step.observation
            if step.done:
                return steps, env.metrics()
    return asyncio.run(episode())


def test_scripted_player_wins_within_six_guesses():
    results = [play(i * 97)[1] for i in range(15)]
    assert all(m["won"] == 1.0 for m in results), results
    assert sum(m["turns"] for m in results) / len(results) < 4.5


def test_invalid_guesses_cost_a_turn_and_the_game_ends():
    steps, metrics = play(0, ["nonsense", "<guess>zzzzz</guess>", "a", "b", "c", "d"])
    assert "Invalid guess 1: no <guess>word</guess>" in steps[0].observation
    assert "'zzzzz' is not in the word list" in steps[1].observation
    assert steps[-1].done and steps[-1].reward == 0.0 and "the word was" in steps[-1].observation
    assert metrics == {"turns": 6.0, "won": 0.0, "invalid_guesses": 6.0}


def test_transcript_replays_a_win():
    words = WordleEnv().words
    actions = play_transcript(words[42], words)
    steps, metrics = play(42, list(actions))
    assert steps[-1].reward == 1.0 and metrics["turns"] == len(actions)
