import numpy as np
import pytest

from veloxserve.errors import InvalidInput, ItemNotFound
from veloxserve.models.catalog import ItemCatalog
from veloxserve.models.features import MatrixFactorizationFeatures


def test_integer_like_ids_are_found_by_int_or_string_and_given_back_as_ints() -> None:
    catalog = ItemCatalog(np.array(["10", "7", "300"]))
    assert catalog.row(7) == 1 and catalog.row("7") == 1
    assert catalog.externals(np.array([2, 0])) == [300, 10]


def test_string_ids_are_given_back_as_strings() -> None:
    catalog = ItemCatalog(np.array(["jazz-1", "7"]))
    assert catalog.external(1) == "7"
    assert catalog.row("jazz-1") == 0


def test_leading_zero_ids_stay_strings_so_they_round_trip() -> None:
    catalog = ItemCatalog(np.array(["007", "8"]))
    assert catalog.external(0) == "007"


def test_unknown_item_error_names_the_item() -> None:
    catalog = ItemCatalog(np.array(["1", "2"]))
    with pytest.raises(ItemNotFound, match="'99'"):
        catalog.row("99")


@pytest.mark.parametrize("bad", [None, 1.5, True, "", [1], "x" * 300])
def test_malformed_ids_are_invalid_input_naming_the_field(bad: object) -> None:
    catalog = ItemCatalog(np.array(["1"]))
    with pytest.raises(InvalidInput, match="'item'"):
        catalog.row(bad)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        ItemCatalog(np.array(["1", "1"]))


def test_features_put_the_item_baseline_and_a_constant_in_the_basis() -> None:
    V = np.arange(6, dtype=float).reshape(3, 2)
    f = MatrixFactorizationFeatures(V, np.array([0.1, -0.2, 0.3]), global_mean=3.5)
    assert f.dim == 4
    np.testing.assert_allclose(f.of_rows(np.array([1])), [[2.0, 3.0, 3.3, 1.0]])
    # a user who trusts the baseline and has no taste or bias scores the item's baseline
    np.testing.assert_allclose(f.matrix @ np.array([0, 0, 1.0, 0]), 3.5 + np.array([0.1, -0.2, 0.3]))
    assert not f.matrix.flags.writeable
