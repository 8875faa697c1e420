"""Data readers (wiki-18 corpus, FlashRAG QA, Search-R1 training parquet) and the task pipeline.

Formats read:
  * wiki-18 corpus JSONL (Search-R1 / FlashRAG): `{"id": "0", "contents": "\\"Title\\"\\ntext"}`;
    rows with `title` and `text` instead of `contents` are accepted and converted.
  * FlashRAG QA JSONL or parquet: `{"id", "question", "golden_answers": [...], ...}`.
  * Search-R1 training parquet (scripts/data_process/*.py): rows with `prompt` (chat messages
    whose user content ends in "Question: ...\\n"), `reward_model.ground_truth.target`,
    `data_source`, `extra_info` and usually the original `question` / `golden_answers`.

Every reader returns tasks as plain JSON dicts `{"id", "question", "golden_answers", ...}`, the
task shape of the search_r1 env.

Paths may be local or URLs (`gs://bucket/data/train.parquet`, `memory://...`): files are opened
through etils.epath, whose fsspec backend reads `gs://` with gcsfs (pinned in requirements.txt).
The tasks then reach the training loop through grain (`agentic.tasks.task_dataset`: per-process
shards, a seeded shuffle per epoch, resumable state).

Search-R1's data (`scripts/nq_hotpotqa/data_process.sh`) is two parquet files in one directory:
`train.parquet` (NQ + HotpotQA train, `data_source` "nq" / "hotpotqa") and `test.parquet`, the
7 test sets of Table 2 concatenated (`SEARCH_R1_TEST_SOURCES`, each set whole, one after the
other). `eval_order` interleaves the data sources so that the first N held-out tasks (the
in-training evals) cover every set, not N rows of NQ.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Table 2's test sets, in the paper's column order: `data_source` values of Search-R1's test.parquet
# (scripts/data_process/qa_search_test_merge.py --data_sources, as data_process.sh calls it).
SEARCH_R1_TEST_SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
SEARCH_R1_TRAIN_SOURCES = ("nq", "hotpotqa")


def _open(path: str, mode: str = "r"):
    """Opens a local path or a URL (gs://, memory://, ...) through etils.epath."""
    from etils import epath

    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    return p.open(mode, **({"encoding": "utf-8"} if "b" not in mode else {}))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with _open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def corpus_row(row: Mapping[str, Any], index: int) -> dict[str, str]:
    """A wiki-18 row `{"id", "contents"}` from a row with `contents`, or with `title` and `text`."""
    if "contents" in row:
        contents = row["contents"]
    elif "text" in row:
        contents = f'"{row.get("title", "")}"\n{row["text"]}'
    else:
        raise ValueError(f"corpus row {index} has neither 'contents' nor 'text': keys {sorted(row)}")
    return {"id": str(row.get("id", index)), "contents": str(contents)}


def read_corpus(path: str) -> list[dict[str, str]]:
    """Reads a wiki-18 style corpus (JSONL, or parquet with the same columns)."""
    rows = _read_rows(path)
    return [corpus_row(r, i) for i, r in enumerate(rows)]


def _read_rows(path: str) -> list[dict[str, Any]]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with _open(path, "rb") as f:
            return pq.read_table(f).to_pylist()
    return read_jsonl(path)


def _answers(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value is None or not hasattr(value, "__iter__"):
        raise ValueError(f"{where}: golden answers must be a string or a list, got {value!r}")
    return [str(v) for v in value]


def qa_row_to_task(row: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """A FlashRAG QA row -> task."""
    if "question" not in row or "golden_answers" not in row:
        raise ValueError(f"QA row {index} needs 'question' and 'golden_answers', has {sorted(row)}")
    task = {"id": str(row["id"] if row.get("id") is not None else index), "question": str(row["question"]),
            "golden_answers": _answers(row["golden_answers"], f"QA row {index}")}
    for key in ("hops", "data_source", "subject", "relations", "passage_ids"):
        if key in row:
            task[key] = row[key]
    return task


def search_r1_row_to_task(row: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """A row of Search-R1's training/test parquet -> task (question without the prompt template)."""
    where = f"Search-R1 row {index}"
    question = row.get("question")
    if question is None:
        prompt = row.get("prompt")
        try:
            content = prompt[-1]["content"] if not isinstance(prompt, str) else prompt
        except (TypeError, KeyError, IndexError) as e:
            raise ValueError(f"{where}: no 'question' and no readable 'prompt'") from e
        if "Question:" not in content:
            raise ValueError(f"{where}: prompt has no 'Question:' to take the question from")
        question = content.rsplit("Question:", 1)[1]
    gold = row.get("golden_answers")
    if gold is None:
        try:
            gold = row["reward_model"]["ground_truth"]["target"]
        except (TypeError, KeyError) as e:
            raise ValueError(f"{where}: no 'golden_answers' and no reward_model.ground_truth.target") from e
    extra = row.get("extra_info") or {}
    row_id = next((v for v in (row.get("id"), extra.get("index")) if v is not None), index)
    task = {"id": str(row_id), "question": str(question).strip(),
            "golden_answers": _answers(gold, where)}
    if row.get("data_source") is not None:
        task["data_source"] = row["data_source"]
    return task


def read_tasks(path: str) -> list[dict[str, Any]]:
    """Reads tasks from FlashRAG QA JSONL/parquet or a Search-R1 parquet (detected per row)."""
    rows = _read_rows(path)
    return [search_r1_row_to_task(r, i) if r.get("reward_model") is not None or r.get("golden_answers") is None
            else qa_row_to_task(r, i) for i, r in enumerate(rows)]


def load_tasks(source: str, *, eval_source: str = "", world_passages: int = 0, world_seed: int = 0,
               hops: Sequence[int] = (1, 2)) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out tasks: the synthetic world's (`source="synthetic"`, questions of the given
    hop counts), or FlashRAG / Search-R1 files (`eval_source` for held-out, else `source`)."""
    if source == "synthetic":
        from envs.search import world as world_lib

        world = world_lib.build_world(num_passages=world_passages, seed=world_seed)
        wanted = set(hops)
        return ([t for t in world.train_tasks if t["hops"] in wanted],
                [t for t in world.test_tasks if t["hops"] in wanted])
    return read_tasks(source), read_tasks(eval_source or source)


def eval_order(tasks: Sequence[Mapping[str, Any]], seed: int = 0) -> list[Mapping[str, Any]]:
    """Held-out tasks interleaved across `data_source` (round robin over the sources, each source's
    tasks in a seeded shuffle): any prefix samples every source about equally, so an in-training
    eval of the first N tasks covers all 7 test sets. Tasks without a data source form one group.
    The whole list is a permutation of `tasks`.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for t in tasks:
        groups.setdefault(str(t.get("data_source", "")), []).append(t)
    if len(groups) <= 1:
        return list(tasks)
    rng = random.Random(seed)
    queues = []
    for name in sorted(groups, key=lambda n: (SEARCH_R1_TEST_SOURCES.index(n) if n in SEARCH_R1_TEST_SOURCES
                                               else len(SEARCH_R1_TEST_SOURCES), n)):
        g = list(groups[name])
        rng.shuffle(g)
        queues.append(g)
    out: list[Mapping[str, Any]] = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out
