"""Readers for the formats Search-R1 users have on disk, and the grain task pipeline."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agentic import tasks as tasks_lib
from envs.search import data
from envs.search.env import make_prompt


def test_read_wiki18_corpus(tmp_path):
    path = tmp_path / "wiki-18.jsonl"
    path.write_text(
        json.dumps({"id": "0", "contents": '"Paris"\nParis is the capital of France.'}) + "\n"
        + json.dumps({"id": "1", "title": "Lyon", "text": "Lyon is a city."}) + "\n\n")
    corpus = data.read_corpus(str(path))
    assert corpus == [{"id": "0", "contents": '"Paris"\nParis is the capital of France.'},
                      {"id": "1", "contents": '"Lyon"\nLyon is a city.'}]
    path.write_text(json.dumps({"id": "0", "body": "x"}) + "\n")
    with pytest.raises(ValueError, match="contents"):
        data.read_corpus(str(path))


def test_read_flashrag_qa_jsonl_and_parquet(tmp_path):
    rows = [{"id": "test_0", "question": "who wrote hamlet", "golden_answers": ["Shakespeare", "W. Shakespeare"],
             "metadata": {"type": "who"}},
            {"id": "test_1", "question": "capital of france?", "golden_answers": ["Paris"],
             "metadata": {"type": "what"}}]
    jsonl = tmp_path / "nq.jsonl"
    data.write_jsonl(str(jsonl), rows)
    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "nq.parquet"))
    expected = [{"id": "test_0", "question": "who wrote hamlet", "golden_answers": ["Shakespeare", "W. Shakespeare"]},
                {"id": "test_1", "question": "capital of france?", "golden_answers": ["Paris"]}]
    assert data.read_tasks(str(jsonl)) == expected
    assert data.read_tasks(str(tmp_path / "nq.parquet")) == expected


def test_read_search_r1_training_parquet(tmp_path):
    """Rows as Search-R1's scripts/data_process/nq_search.py writes them (prompt already templated)."""
    def row(i, q, gold, with_original_columns):
        r = {"data_source": "nq", "prompt": [{"role": "user", "content": make_prompt(q)}],
             "ability": "fact-reasoning",
             "reward_model": {"style": "rule", "ground_truth": {"target": gold}},
             "extra_info": {"split": "train", "index": i}}
        # Parquet columns are shared: rows without the original columns hold nulls there.
        r.update(id=f"train_{i}" if with_original_columns else None, question=q if with_original_columns else None,
                 golden_answers=gold if with_original_columns else None)
        return r

    rows = [row(0, "who got the first nobel prize in physics?", ["Wilhelm Conrad Röntgen"], False),
            row(1, "when was the eiffel tower built", ["1889"], True)]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    tasks = data.read_tasks(str(path))
    assert tasks == [
        {"id": "0", "question": "who got the first nobel prize in physics?",
         "golden_answers": ["Wilhelm Conrad Röntgen"], "data_source": "nq"},
        {"id": "train_1", "question": "when was the eiffel tower built", "golden_answers": ["1889"],
         "data_source": "nq"},
    ]
    # The env re-renders the same prompt Search-R1 trained on.
    assert make_prompt(tasks[0]["question"]) == rows[0]["prompt"][0]["content"]


def test_task_dataset_shuffles_shards_and_resumes():
    tasks = [{"id": str(i), "question": f"q{i}", "golden_answers": [str(i)]} for i in range(10)]

    def take(it, n):
        return [next(it)["id"] for _ in range(n)]

    first = take(iter(tasks_lib.task_dataset(tasks, seed=0)), 20)
    assert first == take(iter(tasks_lib.task_dataset(tasks, seed=0)), 20)           # seeded
    assert first != take(iter(tasks_lib.task_dataset(tasks, seed=1)), 20)
    assert sorted(first[:10]) == sorted(first[10:]) and first[:10] != first[10:]  # reshuffled per epoch
    shards = [set(take(iter(tasks_lib.task_dataset(tasks, seed=0, num_epochs=1, shard_index=i, shard_count=3)),
                       len(range(i, 10, 3)))) for i in range(3)]
    assert set.union(*shards) == {t["id"] for t in tasks} and sum(map(len, shards)) == 10  # disjoint cover

    it = iter(tasks_lib.task_dataset(tasks, seed=5))
    take(it, 7)
    state = json.loads(json.dumps(it.get_state()))  # checkpointable as JSON
    expected = take(it, 9)
    resumed = iter(tasks_lib.task_dataset(tasks, seed=5))
    resumed.set_state(state)
    assert take(resumed, 9) == expected
    with pytest.raises(ValueError, match="shard_index"):
        tasks_lib.task_dataset(tasks, seed=0, shard_index=3, shard_count=3)
