"""Documents by topic in the 20 Newsgroups "bydate" layout: one folder per topic, one file per document.

The document-recommendation benchmark and tests need a corpus whose topics are learnable from the
words (so a learned text basis has something to find) but which is small, seeded and needs no
download. `generate_corpus` writes one: every topic has its own vocabulary, drawn Zipf-skewed,
mixed with a shared vocabulary of common words, at lengths like newsgroup posts (log-normal, a few
dozen to a few hundred words), each file opening with a small mail header as real posts do.
`read_corpus` reads that or the real corpus (either one split folder, or the unpacked archive with
its `20news-bydate-train` / `20news-bydate-test` folders), latin-1 tolerant, headers skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from veloxserve.errors import invalid_parameter
from veloxserve.training.ratings import Ratings

_SYLLABLES = ("ba", "ce", "di", "fo", "gu", "ha", "ki", "lo", "mu", "na", "pe", "qui", "ro", "sa", "tu", "vy")
_HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")
# The real corpus's folder names, used for the generated topics so paths look the same.
NEWSGROUPS = (
    "alt.atheism",
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "misc.forsale",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "soc.religion.christian",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.politics.misc",
    "talk.religion.misc",
)


def _vocabulary(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct made-up words of 2-4 syllables."""
    words: set[str] = set()
    while len(words) < n:
        length = int(rng.integers(2, 5))
        words.add("".join(_SYLLABLES[int(s)] for s in rng.integers(0, len(_SYLLABLES), size=length)))
    return sorted(words)


def _zipf(n: int, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def generate_corpus(
    directory: Path | str,
    topics: int = 20,
    docs_per_topic: int = 50,
    seed: int = 0,
    *,
    topic_words: int = 300,
    shared_words: int = 500,
    topic_share: float = 0.35,
    mean_length: int = 120,
) -> Path:
    """Write `topics` folders of `docs_per_topic` documents under `directory`; returns it.

    Each word of a document is from its topic's vocabulary with probability `topic_share`
    (else from the shared one), so topics are separable from a few dozen words but not trivially.
    """
    if not 1 <= topics <= 1000:
        raise invalid_parameter("topics", "generate_corpus", "an integer in [1, 1000]", topics)
    if docs_per_topic < 1:
        raise invalid_parameter("docs_per_topic", "generate_corpus", "a positive integer", docs_per_topic)
    if not 0.0 < topic_share <= 1.0:
        raise invalid_parameter("topic_share", "generate_corpus", "a number in (0, 1]", topic_share)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(topics * topic_words + shared_words, rng)
    order = rng.permutation(len(vocab))
    shared = np.array(vocab)[order[:shared_words]]
    own = np.array(vocab)[order[shared_words:]].reshape(topics, topic_words)
    p_shared, p_topic = _zipf(shared_words), _zipf(topic_words, 0.9)
    names = [NEWSGROUPS[t] if t < len(NEWSGROUPS) else f"topic.{t:03d}" for t in range(topics)]
    number = 10_000
    for t, name in enumerate(names):
        folder = root / name
        folder.mkdir(exist_ok=True)
        lengths = np.clip(rng.lognormal(np.log(mean_length), 0.6, size=docs_per_topic), 15, 2000).astype(int)
        for length in lengths:
            from_topic = rng.random(length) < topic_share
            words = np.where(
                from_topic,
                own[t][rng.choice(topic_words, size=length, p=p_topic)],
                shared[rng.choice(shared_words, size=length, p=p_shared)],
            )
            lines = [" ".join(words[i : i + 12]) for i in range(0, length, 12)]
            subject = " ".join(words[:4])
            header = f"From: user{number}@example.org\nSubject: {subject}\nLines: {len(lines)}\n\n"
            (folder / str(number)).write_text(header + "\n".join(lines) + "\n", encoding="latin-1")
            number += 1
    return root


def _body(text: str) -> str:
    """The text without its mail header: drop leading `Key: value` lines up to the first blank line.
    A file that does not open with a header is all body."""
    lines = text.splitlines()
    if not lines or not _HEADER_LINE.match(lines[0]):
        return text.strip()
    for i, line in enumerate(lines):
        if not line.strip():
            return "\n".join(lines[i + 1 :]).strip()
        if not (_HEADER_LINE.match(line) or line[:1] in (" ", "\t")):  # not a header or its continuation
            return "\n".join(lines[i:]).strip()
    return ""


def _topic_roots(root: Path) -> list[Path]:
    """The folders holding topic folders: the root itself, or its bydate split folders."""
    children = sorted(p for p in root.iterdir() if p.is_dir())
    splits = [p for p in children if p.name.startswith("20news-bydate")]
    return splits or [root]


def read_corpus(directory: Path | str) -> tuple[list[str], list[str], list[str]]:
    """(doc_ids, topics, texts) of every document, sorted by id; an id is "<topic>/<file name>"
    (with the split folder in front for the real archive's train/test folders, so ids stay unique)."""
    root = Path(directory)
    if not root.is_dir():
        raise invalid_parameter(
            "data", "read_corpus", "a folder of topic folders (20 Newsgroups bydate layout)", str(root)
        )
    doc_ids: list[str] = []
    topics: list[str] = []
    texts: list[str] = []
    for split in _topic_roots(root):
        prefix = f"{split.name}/" if split != root else ""
        for folder in sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
                doc_ids.append(f"{prefix}{folder.name}/{path.name}")
                topics.append(folder.name)
                texts.append(_body(path.read_bytes().decode("latin-1")))
    if not doc_ids:
        raise invalid_parameter(
            "data", "read_corpus", "a folder of topic folders each holding document files", f"no documents in {root}"
        )
    return doc_ids, topics, texts


def topic_ratings(
    doc_ids: Sequence[str] | np.ndarray,
    topics: Sequence[str] | np.ndarray,
    n_users: int,
    per_user: int,
    *,
    liked: int = 3,
    noise: float = 0.3,
    seed: int = 0,
    grouped: bool = False,
    group_seed: int = 0,
) -> tuple[Ratings, np.ndarray]:
    """Synthetic readers who each like `liked` topics: user u rates a document of topic t
    3 + a_{u,t} + noise, a_{u,t} ≈ 1.5 for liked topics and ≈ -0.5 otherwise, on `per_user`
    documents drawn uniformly. With `grouped`, topics form seeded groups of `liked` related ones
    (as comp.* or rec.* do; drawn from `group_seed`, so readers of different seeds share them) and
    each reader likes one group: tastes then share a low-dimensional structure, the setting where
    a shared basis helps. Returns the ratings and a (n_users,
    n_topics) preference matrix."""
    names, topic_of = np.unique(np.asarray(topics, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    prefs = rng.normal(-0.5, 0.2, size=(n_users, names.size))
    likes = np.argsort(rng.random((n_users, names.size)), axis=1)[:, : min(liked, names.size)]
    if grouped:
        order = np.random.default_rng(group_seed).permutation(names.size)
        groups = np.array_split(order, max(1, names.size // max(1, liked)))
        chosen = rng.integers(0, len(groups), size=n_users)
        width = max(g.size for g in groups)
        padded = np.array([np.resize(g, width) for g in groups])  # a short group repeats a topic
        likes = padded[chosen]
    np.put_along_axis(prefs, likes, rng.normal(1.5, 0.3, size=likes.shape), axis=1)
    per_user = min(per_user, len(doc_ids))
    docs = np.argsort(rng.random((n_users, len(doc_ids))), axis=1)[:, :per_user]  # without repeats
    users = np.repeat(np.arange(n_users), per_user)
    items = docs.ravel()
    scores = 3.0 + prefs[users, topic_of[items]] + rng.normal(0.0, noise, size=items.size)
    ids = np.asarray(doc_ids, dtype=str)
    return Ratings(np.char.add("u", users.astype(str)), ids[items], scores), prefs
