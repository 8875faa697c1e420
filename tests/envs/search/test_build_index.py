"""The index-building CLI on the formats users have: a wiki-18 corpus and the synthetic world."""

import json

from envs.search import build_index
from envs.search.data import read_jsonl
from envs.search.retrieval import load_retriever, read_meta


def test_cli_indexes_a_wiki18_corpus(tmp_path, capsys):
    corpus = tmp_path / "wiki.jsonl"
    rows = [{"id": str(i), "contents": f'"Topic {i}"\nParagraph about subject{i} and more.'} for i in range(50)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "index"
    build_index.main(["--corpus", str(corpus), "--out", str(out)])
    assert "50 passages" in capsys.readouterr().out
    meta = read_meta(str(out))
    assert meta["bm25"] and meta["dense"] is None and meta["num_docs"] == 50
    hits = load_retriever("bm25", index_dir=str(out)).batch_search(["subject17"], 3)[0]
    assert hits[0]["document"] == rows[17]


def test_cli_writes_the_synthetic_world_with_tasks(tmp_path):
    out = tmp_path / "world"
    build_index.main(["--synthetic", "300", "--seed", "5", "--out", str(out)])
    assert len(read_jsonl(str(out / "corpus.jsonl"))) == 300
    test = read_jsonl(str(out / "test.jsonl"))
    assert test and {"question", "golden_answers", "hops"} <= set(test[0])
    assert read_meta(str(out))["world"] == {"num_passages": 300, "seed": 5, "version": 1}
