"""What a version's arrays say about a user, and cutting one out (forgetting)."""

from __future__ import annotations

import numpy as np

from tests.conftest import synthetic_version_arrays
from veloxserve.models.version import USER_ARRAYS, ModelVersion, without_user


def test_without_user_removes_exactly_their_rows_and_rated_items() -> None:
    arrays, meta = synthetic_version_arrays()
    users = {name: arrays[name] for name in USER_ARRAYS}
    ids = list(users["user_ids"])
    target = ids[1]
    before = ModelVersion.from_arrays(arrays, meta).users
    cut = without_user(users, target)
    assert cut is not None
    updated, ratings = cut
    assert ratings == int(users["user_counts"][1])
    after = ModelVersion.from_arrays({**arrays, **updated}, meta).users
    assert list(after.ids) == ids[:1] + ids[2:]
    for index in range(len(after.ids)):  # every other user keeps their statistics and items
        old = index if index < 1 else index + 1
        np.testing.assert_array_equal(after.seen_rows(index), before.seen_rows(old))
        np.testing.assert_array_equal(after.gram[index], before.gram[old])
    assert without_user(users, "nobody") is None
