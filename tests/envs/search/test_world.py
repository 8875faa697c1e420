"""The synthetic world: deterministic, fast, fictional, and the answers really need retrieval."""

import collections
import re
import time

from envs.search import world as W


def test_deterministic_and_seeded():
    a, b, c = W.build_world(500, seed=3), W.build_world(500, seed=3), W.build_world(500, seed=4)
    assert a.corpus == b.corpus and a.test_tasks == b.test_tasks and a.train_tasks == b.train_tasks
    assert a.corpus != c.corpus


def test_default_size_is_fast():
    start = time.process_time()  # CPU time: steady on a shared machine
    w = W.build_world()
    assert time.process_time() - start < 3.0
    assert len(w.corpus) == 20_000
    assert len(w.train_tasks) > 30_000 and len(w.test_tasks) > 3_000


def test_wiki18_rows_and_unique_titles(world):
    titles = []
    for i, row in enumerate(world.corpus):
        assert set(row) == {"id", "contents"} and row["id"] == str(i)
        m = re.fullmatch(r'"([^"\n]+)"\n([^\n]+)', row["contents"])
        assert m, row
        titles.append(m.group(1))
    assert len(set(titles)) == len(titles)


def test_splits_have_disjoint_subjects_and_both_hop_counts(world):
    train = {t["subject"] for t in world.train_tasks}
    test = {t["subject"] for t in world.test_tasks}
    assert train and test and not train & test
    hops = collections.Counter(t["hops"] for t in world.test_tasks)
    assert hops[1] == len(test) and hops[2] >= 0.95 * len(test)  # a few subjects have no proper 2-hop chain
    ids = [t["id"] for t in world.train_tasks + world.test_tasks]
    assert len(set(ids)) == len(ids)


def test_tasks_are_consistent_with_passages(world):
    """Following `passage_ids` and reading each relation reproduces the gold answer."""
    for t in world.test_tasks:
        assert t["subject"] in t["question"]
        for pid, rel in zip(t["passage_ids"], t["relations"], strict=True):
            value = W.parse_fact(world.corpus[int(pid)]["contents"], rel)
            assert value is not None, (t, rel)
        assert value == t["golden_answers"][0]


def test_two_hop_answer_is_not_in_the_subject_passage(world):
    for t in world.train_tasks + world.test_tasks:
        if t["hops"] == 2:
            subject_text = world.corpus[int(t["passage_ids"][0])]["contents"]
            assert not re.search(rf"\b{re.escape(t['golden_answers'][0])}\b", subject_text), t


def test_prior_guessing_is_rarely_right(world):
    """The most common training answer of each question type is right for under 2% of test questions."""
    by_type = collections.defaultdict(collections.Counter)
    for t in world.train_tasks:
        by_type[tuple(t["relations"])][t["golden_answers"][0]] += 1
    guess = {k: c.most_common(1)[0][0] for k, c in by_type.items()}
    right = [guess.get(tuple(t["relations"])) == t["golden_answers"][0] for t in world.test_tasks]
    assert sum(right) / len(right) < 0.02
