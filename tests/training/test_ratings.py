from pathlib import Path

import numpy as np
import pytest

from veloxserve.errors import InvalidInput
from veloxserve.training.ratings import Ratings, load_ratings, split_holdout, write_ratings_csv, write_ratings_parquet

ROWS = [("1", "10", 4.0, 881250949), ("2", "10", 3.5, 881250950), ("1", "20", 1.0, 881250951)]


def check(r: Ratings, with_time: bool = True) -> None:
    assert r.users.tolist() == ["1", "2", "1"] and r.items.tolist() == ["10", "10", "20"]
    np.testing.assert_array_equal(r.scores, [4.0, 3.5, 1.0])
    if with_time:
        assert r.timestamps.tolist() == [881250949, 881250950, 881250951]


def test_csv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("user,item,score,timestamp\n" + "".join(f"{u},{i},{s},{t}\n" for u, i, s, t in ROWS))
    check(load_ratings(path))


def test_movielens_u_data_tab_separated(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{s}\t{t}\n" for u, i, s, t in ROWS))
    check(load_ratings(path))


def test_movielens_ratings_dat_double_colon(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::{s}::{t}\n" for u, i, s, t in ROWS))
    check(load_ratings(path))


def test_csv_and_parquet_round_trip(tmp_path: Path) -> None:
    ratings = Ratings(
        np.array(["1", "2", "1"]),
        np.array(["10", "10", "20"]),
        np.array([4.0, 3.5, 1.0]),
        np.array([881250949, 881250950, 881250951]),
    )
    write_ratings_csv(ratings, tmp_path / "r.csv")
    write_ratings_parquet(ratings, tmp_path / "r.parquet")
    check(load_ratings(tmp_path / "r.csv"))
    check(load_ratings(tmp_path / "r.parquet"))


@pytest.mark.parametrize(
    "content, problem",
    [
        ("user,item\n1,2\n", "missing column"),
        ("user,item,score\n", "no ratings"),
        ("user,item,score\n1,2,nan\n", "NaN"),
        ("user,item,score\n1,2,\n", "missing"),
        ("user,item,score\n1,2,great\n", "score"),
    ],
)
def test_bad_files_are_invalid_input_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InvalidInput, match="bad.csv") as info:
        load_ratings(path)
    assert problem in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        load_ratings(tmp_path / "absent.csv")


def test_split_holdout_partitions_the_ratings() -> None:
    n = 1000
    ratings = Ratings(np.arange(n).astype(str), np.zeros(n).astype(str), np.arange(n, dtype=float))
    train, test = split_holdout(ratings, 0.2, seed=1)
    assert len(train) + len(test) == n and 150 < len(test) < 250
    assert set(train.scores) | set(test.scores) == set(ratings.scores)


def test_columns_map_the_files_names_in_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "r.csv").write_text("uid,iid,rating,user\n007,12,4.5,ignored\n8,013,1.0,ignored\n")
    csv = load_ratings(tmp_path / "r.csv", {"user": "uid", "item": "iid", "score": "rating"})
    assert csv.users.tolist() == ["007", "8"] and csv.items.tolist() == ["12", "013"]  # ids stay text
    assert csv.scores.tolist() == [4.5, 1.0]  # the file's own `user` column is not the users
    table = pa.table({"who": ["a", "b"], "item": ["x", "y"], "stars": [3, 5], "when": [1, 2]})
    pq.write_table(table, tmp_path / "r.parquet")
    parquet = load_ratings(tmp_path / "r.parquet", {"user": "who", "score": "stars", "timestamp": "when"})
    assert parquet.users.tolist() == ["a", "b"] and parquet.timestamps.tolist() == [1, 2]


def test_a_bad_column_mapping_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("uid,iid,rating\n1,2,3\n")
    with pytest.raises(InvalidInput, match="no column 'usr' for user"):
        load_ratings(tmp_path / "r.csv", {"user": "usr", "item": "iid", "score": "rating"})
    with pytest.raises(InvalidInput) as unknown:
        load_ratings(tmp_path / "r.csv", {"person": "uid"})
    assert unknown.value.field == "person" and "user, item, score, timestamp" in unknown.value.message
