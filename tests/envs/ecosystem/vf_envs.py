"""Small environments written against verifiers' classic API, as an env author writes them
(`import verifiers as vf`, a `load_environment`, a Rubric of reward functions): guess-the-number
(a MultiTurnEnv), an adder (a ToolEnv), and one whose `env_response` raises on "raise"."""

import verifiers as vf
from datasets import Dataset

SYSTEM = "Guess the secret number. Reply with the number only."


def _last_reply(completion) -> str:
    replies = [m for m in completion if m.role == "assistant"]
    return (replies[-1].content or "").strip() if replies else ""


class GuessNumberEnv(vf.MultiTurnEnv):
    """Hints "higher" / "lower" after each wrong guess; ends when a guess is right, at max_turns, or
    with a final message when the model gives up."""

    async def setup_state(self, state):
        state["guesses"] = 0
        return state

    @vf.stop
    async def guessed(self, state) -> bool:
        if not state["trajectory"]:
            return False
        return _last_reply(state["trajectory"][-1]["completion"]) == state["answer"]

    async def env_response(self, messages, state, **kwargs):
        state["guesses"] += 1
        guess = _last_reply(messages)
        if guess == "raise" and self.raise_on_request:
            raise KeyError("GuessNumberEnv was told to raise")
        if guess == "give up":
            state["final_env_response"] = [vf.UserMessage(content=f"The number was {state['answer']}.")]
            return state["final_env_response"]
        if not guess.lstrip("-").isdigit():
            return [vf.UserMessage(content="Reply with a number.")]
        hint = "higher" if int(guess) < int(state["answer"]) else "lower"
        return [vf.UserMessage(content=f"{guess} is wrong: go {hint}.")]


def correct(completion, answer) -> float:
    return 1.0 if _last_reply(completion) == answer else 0.0


def mentions_answer(completion, answer) -> float:
    return 1.0 if answer in _last_reply(completion) else 0.0


async def guesses(state) -> float:
    return float(state["guesses"])


def load_environment(secrets=(11, 3, 16, 8), max_turns: int = 6, raise_on_request: bool = False) -> vf.Environment:
    dataset = Dataset.from_list([{"question": "I picked a number from 1 to 16. Guess it.", "answer": str(s)}
                                 for s in secrets])
    rubric = vf.Rubric(funcs=[correct, guesses], weights=[1.0, 0.0])
    return GuessNumberEnv(dataset=dataset, system_prompt=SYSTEM, rubric=rubric, max_turns=max_turns,
                          raise_on_request=raise_on_request)


def load_raising_environment() -> vf.Environment:
    return load_environment(raise_on_request=True)


def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


def load_tool_environment() -> vf.Environment:
    dataset = Dataset.from_list([{"question": "What is 1234 + 4321? Use the add tool.", "answer": "5555"}])
    return vf.ToolEnv(dataset=dataset, tools=[add], max_turns=4, rubric=vf.Rubric(funcs=[mentions_answer]))


def load_math_environment() -> vf.Environment:
    """A single-turn math env scored by verifiers' own MathRubric (math-verify on the \\boxed{} answer)."""
    dataset = Dataset.from_list([{"question": "What is 1/4 + 1/4?", "answer": "1/2"},
                                 {"question": "What is 2^10?", "answer": "1024"}])
    return vf.SingleTurnEnv(dataset=dataset, system_prompt="Put the final answer in \\boxed{}.",
                            rubric=vf.MathRubric())


class ForgetfulEnv(GuessNumberEnv):
    """Shows the model only the original prompt and the latest hint (a non-linear history)."""

    async def get_prompt_messages(self, state):
        if not state["trajectory"]:
            return state["prompt"]
        last = state["trajectory"][-1]
        return [*state["prompt"], *await self.env_response([*last["prompt"], *last["completion"]], state)]


def load_forgetful_environment() -> vf.Environment:
    dataset = Dataset.from_list([{"question": "Guess my number from 1 to 16.", "answer": "11"}])
    return ForgetfulEnv(dataset=dataset, rubric=vf.Rubric(funcs=[correct]), max_turns=6, raise_on_request=False)
