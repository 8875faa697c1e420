"""Readers for the formats Search-R1 users have on disk, and the grain task pipeline."""

import collections
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


def _search_r1_rows(source, n, split):
    """Rows as Search-R1's qa_search_{train,test}_merge.py write them."""
    return [{"id": f"{split}_{i}", "question": f"{source} question {i}?", "golden_answers": [f"{source}{i}"],
             "data_source": source, "prompt": [{"role": "user", "content": make_prompt(f"{source} question {i}")}],
             "ability": "fact-reasoning",
             "reward_model": {"style": "rule", "ground_truth": {"target": [f"{source}{i}"]}},
             "extra_info": {"split": split, "index": i}} for i in range(n)]


def test_search_r1_files_from_a_url_through_grain(memory_url):
    """Search-R1's train.parquet / test.parquet at a bucket URL (memory:// stands in for gs://, same
    epath/fsspec code): the experiment reads both, the held-out order covers all 7 test sets in its
    first 7 tasks, and the training tasks stream through grain."""
    from etils import epath

    from envs.search.experiment import experiment
    from experiments.configs import search_r1

    base = epath.Path(memory_url) / "nq_hotpotqa_train"
    base.mkdir(parents=True)
    sizes = dict(zip(data.SEARCH_R1_TEST_SOURCES, (30, 20, 20, 15, 10, 5, 2), strict=True))
    test_rows = [r for s, n in sizes.items() for r in _search_r1_rows(s, n, "test")]  # concatenated, as theirs
    with (base / "test.parquet").open("wb") as f:
        pq.write_table(pa.Table.from_pylist(test_rows), f)
    with (base / "train.parquet").open("wb") as f:
        pq.write_table(pa.Table.from_pylist(_search_r1_rows("nq", 6, "train") + _search_r1_rows("hotpotqa", 4, "train")),
                       f)
    config = search_r1.get_config("qwen2_5_3b_tpu")
    assert config.data.source.endswith("/train.parquet") and config.data.eval_source.endswith("/test.parquet")
    assert config.env.kwargs.obs_tokenizer == config.model.name  # max_obs_length counts the policy's tokens
    config.data.source, config.data.eval_source = str(base / "train.parquet"), str(base / "test.parquet")
    ex = experiment(config)
    assert len(ex.train_tasks) == 10 and len(ex.eval_tasks) == len(test_rows)
    assert sorted(t["id"] for t in ex.eval_tasks) == sorted(r["id"] for r in test_rows)  # a permutation
    assert [t["data_source"] for t in ex.eval_tasks[:7]] == list(data.SEARCH_R1_TEST_SOURCES)
    first64 = collections.Counter(t["data_source"] for t in ex.eval_tasks[:64])
    assert set(first64) == set(data.SEARCH_R1_TEST_SOURCES) and first64["nq"] <= 16   # not 64 rows of NQ
    it = iter(tasks_lib.task_dataset(ex.train_tasks, seed=0, num_epochs=1))
    assert sorted(next(it)["id"] for _ in range(10)) == sorted(t["id"] for t in ex.train_tasks)
    with pytest.raises(FileNotFoundError, match="memory://bucket/nope.parquet"):
        data.read_tasks(memory_url + "/nope.parquet")


def test_gcsfs_is_installed_for_gs_paths():
    """gs:// goes through fsspec's "gcs" protocol, which is gcsfs (pinned in requirements.txt)."""
    import fsspec
    import gcsfs

    assert isinstance(fsspec.filesystem("gs", token="anon"), gcsfs.GCSFileSystem)
