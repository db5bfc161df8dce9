"""Catify: the built-in synthetic data set (users rate songs), seeded and reproducible.

It plants what the split model should find — a low-rank taste structure plus song and user
biases — under Zipf-skewed song popularity and user activity and Gaussian rating noise, so tests
can check that training recovers the structure to the noise level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veloxserve.training.ratings import Ratings


@dataclass(frozen=True)
class CatifyData:
    ratings: Ratings
    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    global_mean: float
    noise: float

    def expected(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Noise-free planted scores of (user row, item row) pairs."""
        taste = np.einsum("ij,ij->i", self.user_factors[users], self.item_factors[items])
        return self.global_mean + self.user_bias[users] + self.item_bias[items] + taste


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())  # popularity unrelated to the id


def generate_catify(
    n_users: int = 2000,
    n_items: int = 5000,
    rank: int = 8,
    noise: float = 0.5,
    n_ratings: int = 200_000,
    seed: int = 0,
) -> CatifyData:
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(scale=1.0 / np.sqrt(rank), size=(n_users, rank))
    item_factors = rng.normal(scale=1.0, size=(n_items, rank))
    user_bias = rng.normal(scale=0.3, size=n_users)
    item_bias = rng.normal(scale=0.4, size=n_items)
    mean = 3.5
    # Draw more pairs than needed from skewed marginals, keep the first occurrence of each pair.
    draws = int(n_ratings * 1.6) + 1000
    users = rng.choice(n_users, size=draws, p=_zipf_weights(n_users, 0.6, rng))
    items = rng.choice(n_items, size=draws, p=_zipf_weights(n_items, 0.9, rng))
    _, first = np.unique(users.astype(np.int64) * n_items + items, return_index=True)
    keep = np.sort(first)[:n_ratings]
    users, items = users[keep], items[keep]
    taste = np.einsum("ij,ij->i", user_factors[users], item_factors[items])
    planted = mean + user_bias[users] + item_bias[items] + taste
    scores = planted + rng.normal(scale=noise, size=users.size)
    timestamps = 1_700_000_000 + np.sort(rng.integers(0, 86_400 * 30, size=users.size))
    ratings = Ratings(users.astype(str), items.astype(str), scores, timestamps.astype(np.int64))
    return CatifyData(ratings, user_factors, item_factors, user_bias, item_bias, mean, noise)


_SYLLABLES = ("ka", "lo", "mi", "ra", "su", "te", "vo", "zi", "ne", "pa", "do", "ri", "fu", "ga", "he", "ju")
GENRES = ("jazz", "rock", "pop", "folk", "metal", "soul", "blues", "techno")


def catify_items(data: CatifyData, *, words_per_dim: int = 12, filler: int = 20, seed: int = 0) -> dict[str, list[str]]:
    """An item table for Catify: each song's genre (its strongest planted taste dimension) and a
    description whose words depend on its planted vector and bias, so that text predicts taste
    the way lyrics and tags do: each dimension has words for either sign, the bias has words
    for good and bad songs, and filler words carry nothing."""
    rng = np.random.default_rng(seed)
    n_items, rank = data.item_factors.shape
    n_topic = 2 * rank + 2  # ± per dimension, then good and bad
    codes = rng.choice(len(_SYLLABLES) ** 3, size=n_topic * words_per_dim + 10 * filler, replace=False)
    vocab = np.array(["".join(_SYLLABLES[c // 16**p % 16] for p in range(3)) for c in codes])
    topics, noise = vocab[: n_topic * words_per_dim].reshape(n_topic, words_per_dim), vocab[n_topic * words_per_dim :]
    strength = np.concatenate(
        [
            np.maximum(data.item_factors, 0),
            np.maximum(-data.item_factors, 0),
            np.maximum(data.item_bias, 0)[:, None] / 0.4,
            np.maximum(-data.item_bias, 0)[:, None] / 0.4,
        ],
        axis=1,
    )  # (n_items, n_topic), in units of the planted scales
    counts = rng.poisson(3.0 * strength)
    texts = []
    for item in range(n_items):  # generating a data set, not serving: a loop per song is fine here
        topic_rows = np.repeat(np.arange(n_topic), counts[item])
        words = np.concatenate(
            [
                topics[topic_rows, rng.integers(0, words_per_dim, topic_rows.size)],
                noise[rng.integers(0, noise.size, filler)],
            ]
        )
        texts.append(" ".join(rng.permutation(words)))
    genre = np.array(GENRES)[np.argmax(data.item_factors[:, : len(GENRES)], axis=1) % len(GENRES)]
    return {"item": [str(i) for i in range(n_items)], "genre": genre.tolist(), "text": texts}
