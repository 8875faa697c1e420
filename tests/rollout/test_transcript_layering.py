"""The rollout's transcript modules import one way: transcript <- chat <- episode (<- harness session)."""

import ast
import pathlib

ROLLOUT = pathlib.Path(__file__).resolve().parents[2] / "agentic" / "rollout"


def imported_rollout_modules(name: str) -> set[str]:
    tree = ast.parse((ROLLOUT / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentic.rollout."):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("agentic.rollout.")}
    return found


def test_chat_and_episode_import_one_way():
    assert imported_rollout_modules("transcript") == set()
    assert imported_rollout_modules("chat") == {"transcript"}
    assert "chat" in imported_rollout_modules("episode")
    from agentic.rollout import chat, episode  # and both import cleanly, in either order

    assert episode.ChatTranscript is chat.ChatTranscript and episode.TextCodec is chat.TextCodec
