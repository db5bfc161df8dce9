"""A reader worker's predictions equal worker 0's, whatever the learner did before them.

The learner here is a Velox publishing into a map (what worker 0 of `serve --workers N` runs) and
the reader a `Readers` over the same map, in one process (LMDB opens a map once per process, so
they share it); tests/test_workers.py runs them as two processes behind one port.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import synthetic_version_arrays
from tests.helpers import eventually
from veloxserve.config import HomeLayout
from veloxserve.serving.reader import Readers
from veloxserve.serving.velox import Velox
from veloxserve.storage.published_states import PublishedStates, VersionMoved
from veloxserve.storage.sketch_files import SketchFiles
from veloxserve.storage.versions import VersionStore

USERS = [str(u) for u in range(6)] + ["new-a", "new-b"]  # trained users and users the version never saw
ITEMS = [100 + i for i in range(0, 50, 7)]


def _home(root: Path) -> Path:
    store = VersionStore(HomeLayout(root).versions_dir("songs"))
    for seed, version in ((0, "v1"), (1, "v2")):
        arrays, meta = synthetic_version_arrays(name="songs", seed=seed, version=version)
        store.write(arrays, meta, version=version)
    return root


def _scores(server, pairs) -> np.ndarray:
    return np.array([server.predict(u, i) for u, i in pairs])


def _pairs() -> list[tuple[str, int]]:
    return [(u, i) for u in USERS for i in ITEMS]


def _lists(source, user: str) -> list:
    """Greedy top-k lists of `user` as Velox.recommend (or Readers.recommend) serves them."""
    out = []
    for options in ({}, {"exclude_seen": True}, {"candidates": ITEMS[:4]}, {"candidates": ITEMS, "exclude_seen": True}):
        rec = source.recommend("songs", user, 3, **options)
        out.append((rec.items, rec.scores, rec.model_version))
    return out


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("observe"),
            st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS)), min_size=1, max_size=6),
            st.floats(-2, 6),
        ),
        st.tuples(st.just("forget"), st.sampled_from(USERS), st.just(0.0)),
        st.tuples(st.just("activate"), st.sampled_from(["v1", "v2"]), st.just(0.0)),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_a_reader_answers_what_the_learner_answers_after_any_sequence(tmp_path_factory, ops) -> None:
    root = _home(tmp_path_factory.mktemp("home"))
    published = PublishedStates(tmp_path_factory.mktemp("published"))
    with Velox(root, published=published) as velox:
        velox.activate("songs", "v1")
        readers = Readers(root, published)
        readers.refresh("songs", wait=True)
        pairs = _pairs()
        for op, arg, score in ops:
            if op == "observe":
                velox.observe_many("songs", [(u, i, score) for u, i in arg])  # returns once acknowledged
            elif op == "forget":
                velox.forget_user(arg, "songs")
            else:
                before = readers.server("songs")
                velox.activate("songs", arg)
                with pytest.raises(VersionMoved):  # never an answer from a server no longer served (same version too)
                    before.predict(*pairs[0])
                readers.refresh("songs", wait=True)
            reader = readers.server("songs")
            assert reader.version_id == velox.server("songs").version_id
            # the same bytes of w_u and f: equal, not close
            assert np.array_equal(_scores(reader, pairs), _scores(velox.server("songs"), pairs))
            for user in USERS[::3]:
                assert _lists(readers, user) == _lists(velox, user)
        with pytest.raises(VersionMoved):  # LinUCB needs P_u, not published: worker 0 answers it
            readers.recommend("songs", "1", 3, policy="linucb")
        with pytest.raises(VersionMoved):  # attributes may have changed since the reader loaded them
            readers.recommend("songs", "1", 3, filter="genre:rock")
        readers.close()


def test_a_restarted_learner_republishes_what_it_recovered(tmp_path: Path) -> None:
    root = _home(tmp_path / "home")
    published = PublishedStates(tmp_path / "published")
    readers = Readers(root, published)
    pairs = _pairs()
    with Velox(root, published=published) as velox:
        velox.activate("songs", "v2")
        velox.observe_many("songs", [("new-a", 107, 5.0), ("3", 121, -1.0)])
        expected = _scores(velox.server("songs"), pairs)
    readers.refresh("songs", wait=True)
    assert np.array_equal(_scores(readers.server("songs"), pairs), expected)  # the map outlives the learner
    before = readers.server("songs")
    with Velox(root, published=published) as velox:  # recovers from the checkpoint and the log, republishes
        assert np.array_equal(_scores(velox.server("songs"), pairs), expected)
        velox.observe_many("songs", [("new-a", 114, 0.0)])
        with pytest.raises(VersionMoved):  # the new learner's own namespace: the reader forwards until it loads it
            before.predict(*pairs[0])
        readers.refresh("songs", wait=True)
        assert np.array_equal(_scores(readers.server("songs"), pairs), _scores(velox.server("songs"), pairs))
    readers.close()


def test_a_reader_forwards_what_it_has_not_loaded(tmp_path: Path) -> None:
    published = PublishedStates(tmp_path / "published")
    readers = Readers(_home(tmp_path / "home"), published)
    with pytest.raises(VersionMoved):  # nothing published yet: worker 0 answers
        readers.server("songs")
    with pytest.raises(VersionMoved):  # no such model here: worker 0 answers (with its 404)
        readers.server("nope")
    readers.close()


def test_forgetting_one_user_leaves_users_whose_names_contain_theirs(tmp_path: Path) -> None:
    published = PublishedStates(tmp_path)
    w = np.arange(8.0).reshape(4, 2)
    published.replace("m", "v1", ["a", "ba", "a\u00e9", "v1"], w, [np.arange(n) for n in range(4)])
    published.replace("m2", "v1", ["a"], w[:1], [np.empty(0)])
    published.activate("m", "v1")
    published.activate("m2", "v1")
    published.publish(
        "m", "v2", ["a", "v1"], w[:2] + 10, [np.empty(0), np.array([7])], 2
    )  # a swap to v2 rebuilding its users
    published.remove("m", "a")
    prior = np.full(2, -1.0)
    got = published.weights("m", "v1", ["a", "ba", "a\u00e9", "v1"], prior)
    assert np.array_equal(got, np.vstack([prior, w[1], w[2], w[3]]))
    assert np.array_equal(published.weights("m2", "v1", ["a"], prior), w[:1])  # another model keeps them
    published.activate("m", "v2")  # v1's entries dropped; v2 lost "a" to the forget as well
    assert np.array_equal(published.weights("m", "v2", ["a", "v1", "ba"], prior), np.vstack([prior, w[1] + 10, prior]))
    with pytest.raises(VersionMoved):
        published.weights("m", "v1", ["ba"], prior)
    published.close()


def test_every_acknowledged_observation_is_read_while_the_version_is_rebuilt(tmp_path: Path) -> None:
    """Re-activating the served version rebuilds its users from the log while observations go on:
    the rebuilt state (recovered up to an earlier position) must never replace what readers see."""
    root = _home(tmp_path / "home")
    published = PublishedStates(tmp_path / "published")
    readers = Readers(root, published)
    mismatches: list[tuple[int, float, float]] = []
    with Velox(root, published=published) as velox:
        velox.activate("songs", "v1")
        done = threading.Event()

        def observe() -> None:
            for n in range(150):
                item = ITEMS[n % len(ITEMS)]
                velox.observe("songs", "hot", item, float(n % 5))  # returns once acknowledged
                while True:  # nobody else writes "hot": learner and reader must agree now
                    try:
                        got = readers.server("songs").predict("hot", item)
                        break
                    except VersionMoved:
                        readers.refresh("songs", wait=True)
                want = velox.server("songs").predict("hot", item)
                if got != want:
                    mismatches.append((n, got, want))
            done.set()

        thread = threading.Thread(target=observe)
        thread.start()
        while not done.is_set():
            velox.activate("songs", "v1")
        thread.join(60)
    readers.close()
    assert not mismatches, mismatches[:3]


def test_the_learners_monitoring_counts_what_a_reader_served_until_the_reader_closes(tmp_path: Path) -> None:
    root = _home(tmp_path / "home")
    published, sketches = PublishedStates(tmp_path / "published"), SketchFiles(tmp_path / "sketches")
    with Velox(root, published=published, sketches=sketches) as velox:
        readers = Readers(root, published, instance="worker-1", sketches=sketches)
        readers.refresh("songs", wait=True)
        velox.predict_many("songs", [("0", 101), ("1", 102)])  # trained users, on the learner
        for n in range(30):  # users the version never saw, on the reader
            readers.server("songs").predict(f"reader-only-{n}", 100 + n % 50)

        def counted() -> dict:
            return velox.alerts("songs")["deviations"]

        assert eventually(lambda: counted()["user_requests"] == 32, within=30)
        found = counted()
        assert found["new_users_share"] == 30 / 32 and found["items_requested"] == 32 and found["served_sample"] == 32
        readers.close()  # its requests no longer count: the learner's own are left
        found = counted()
        assert found["user_requests"] == 2 and found["new_users_share"] == 0.0
