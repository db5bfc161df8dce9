"""The generated corpus has the 20 Newsgroups bydate layout, is seeded, and reads back; the reader
takes a real-looking corpus (headers, latin-1 bytes, train/test split folders) too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from veloxserve.errors import InvalidInput
from veloxserve.training.corpus import NEWSGROUPS, generate_corpus, read_corpus, topic_ratings


def test_layout_one_folder_per_topic_one_file_per_document(tmp_path: Path) -> None:
    generate_corpus(tmp_path, topics=4, docs_per_topic=7, seed=1)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == sorted(NEWSGROUPS[:4])
    assert all(len(list((tmp_path / f).iterdir())) == 7 for f in folders)
    ids, topics, texts = read_corpus(tmp_path)
    assert len(ids) == len(set(ids)) == 28
    assert Counter(topics) == {f: 7 for f in folders}
    assert all(i.split("/")[0] == t for i, t in zip(ids, topics, strict=True))
    assert not any("From:" in t or "Subject:" in t for t in texts)  # headers skipped
    lengths = np.array([len(t.split()) for t in texts])
    assert lengths.min() >= 15 and lengths.max() > 2 * lengths.min()  # realistic, varied lengths


def test_seeded(tmp_path: Path) -> None:
    a = read_corpus(generate_corpus(tmp_path / "a", topics=3, docs_per_topic=5, seed=3))
    b = read_corpus(generate_corpus(tmp_path / "b", topics=3, docs_per_topic=5, seed=3))
    c = read_corpus(generate_corpus(tmp_path / "c", topics=3, docs_per_topic=5, seed=4))
    assert a == b
    assert a[2] != c[2]


def test_topics_are_separable_from_words(tmp_path: Path) -> None:
    """Words specific to a topic dominate over the other topics' words — there is something to learn."""
    _, topics, texts = read_corpus(generate_corpus(tmp_path, topics=3, docs_per_topic=20, seed=0))
    vocab_by_topic: dict[str, Counter[str]] = {}
    for topic, text in zip(topics, texts, strict=True):
        vocab_by_topic.setdefault(topic, Counter()).update(text.split())
    words = [set(c) for c in vocab_by_topic.values()]
    shared = set.intersection(*words)
    own = [w - set.union(*(o for o in words if o is not w)) for w in words]
    assert all(len(o) > 50 for o in own) and len(shared) > 50


def test_reads_a_real_layout_with_headers_latin1_and_splits(tmp_path: Path) -> None:
    for split in ("20news-bydate-train", "20news-bydate-test"):
        folder = tmp_path / split / "sci.space"
        folder.mkdir(parents=True)
        (folder / "1").write_bytes(
            b"From: a@b.c (Ren\xe9)\nSubject: Re: orbits\nOrganization: X\n  continued\n\nThe body \xe9t\xe9.\n"
        )
        (folder / "2").write_bytes(b"no header here\nsecond line\n")
    ids, topics, texts = read_corpus(tmp_path)
    assert ids == [
        "20news-bydate-test/sci.space/1",
        "20news-bydate-test/sci.space/2",
        "20news-bydate-train/sci.space/1",
        "20news-bydate-train/sci.space/2",
    ]
    assert topics == ["sci.space"] * 4
    assert texts[0] == "The body été."
    assert texts[1] == "no header here\nsecond line"


def test_bad_folders_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="'data'"):
        read_corpus(tmp_path / "missing")
    with pytest.raises(InvalidInput, match="no documents"):
        read_corpus(tmp_path)
    with pytest.raises(InvalidInput, match="'topics'"):
        generate_corpus(tmp_path, topics=0)


def test_topic_readers_like_a_few_topics_and_grouped_ones_share_groups(tmp_path: Path) -> None:
    ids, topics, _ = read_corpus(generate_corpus(tmp_path, topics=6, docs_per_topic=5, seed=0))
    ratings, prefs = topic_ratings(ids, topics, 50, 8, liked=2, seed=1)
    assert len(ratings) == 400 and prefs.shape == (50, 6)
    assert ((prefs > 0.5).sum(axis=1) == 2).all()  # each reader likes two topics
    names = sorted(set(topics))
    for user, item, score in zip(ratings.users[:20], ratings.items[:20], ratings.scores[:20], strict=True):
        truth = 3.0 + prefs[int(user[1:]), names.index(item.split("/")[0])]
        assert abs(score - truth) < 5 * 0.3  # noise around the planted preference
    first, _ = topic_ratings(ids, topics, 40, 3, liked=2, seed=2, grouped=True)
    _, a = topic_ratings(ids, topics, 40, 3, liked=2, seed=2, grouped=True)
    _, b = topic_ratings(ids, topics, 40, 3, liked=2, seed=3, grouped=True)
    groups_a = {frozenset(np.flatnonzero(row > 0.5)) for row in a}
    groups_b = {frozenset(np.flatnonzero(row > 0.5)) for row in b}
    assert len(groups_a | groups_b) == 3  # 6 topics in 3 groups of 2, the same for every seed
    assert all(len(g) == 2 for g in groups_a)
    assert len(set(first.users)) == 40
