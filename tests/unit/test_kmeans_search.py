"""The driver-side cluster search (models/kmeans_search.py): the cosine silhouette against the textbook
O(n^2) definition, spherical k-means on planted directions, determinism, and bad input.

Planted setting: 6 random unit directions in 40 dimensions, 30 points each, every point its direction
plus Gaussian noise (sigma 0.15 per coordinate) made sparse by zeroing coordinates under 0.05. The best
of 5 starts recovers every planted cluster (measured purity 1.0, seeds 0-4) and the silhouette peaks
at the planted k among 3..9.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from watchnext.models.kmeans_search import (
    best_of_starts,
    cosine_silhouette,
    normalize_rows,
    search_k,
    spherical_kmeans,
)

K, PER, DIM = 6, 30, 40


def planted(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(K, DIM))
    truth = np.repeat(np.arange(K), PER)
    points = directions[truth] / np.linalg.norm(directions[truth], axis=1, keepdims=True)
    points = points + rng.normal(scale=0.15, size=points.shape)
    points[np.abs(points) < 0.05] = 0.0
    return normalize_rows(sp.csr_matrix(points)), truth


def silhouette_brute_force(x: np.ndarray, labels: np.ndarray) -> float:
    """The textbook silhouette with the distance 1 - cos, every pair computed."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1.0 - unit @ unit.T
    out = []
    for i in range(len(x)):
        own = labels == labels[i]
        if own.sum() == 1:
            out.append(0.0)
            continue
        a = dist[i, own & (np.arange(len(x)) != i)].mean()
        b = min(dist[i, labels == c].mean() for c in set(labels) if c != labels[i])
        out.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(out))


def test_silhouette_matches_the_pairwise_definition() -> None:
    x, truth = planted()
    rng = np.random.default_rng(3)
    noisy = truth.copy()
    noisy[rng.choice(len(truth), 40, replace=False)] = rng.integers(K, size=40)  # a worse partition
    noisy[5] = K  # a singleton cluster: its point scores 0
    for labels in (truth, noisy):
        assert cosine_silhouette(x, labels) == pytest.approx(
            silhouette_brute_force(x.toarray(), labels), abs=1e-12
        )
    assert cosine_silhouette(x, truth) > cosine_silhouette(x, noisy)


def test_planted_directions_are_recovered_deterministically() -> None:
    x, truth = planted()
    fit, costs = best_of_starts(x, K, seed=1, n_init=5, max_iter=40)
    assert len(costs) == 5 and fit.cost == min(costs)
    # every found cluster is exactly one planted cluster
    pairs = {(int(f), int(t)) for f, t in zip(fit.labels, truth, strict=True)}
    assert len(pairs) == K and len({f for f, _ in pairs}) == K
    # the cost is the sum of 1 - cos to the point's own (unit) centre
    assert np.allclose(np.linalg.norm(fit.centers, axis=1), 1.0)
    cos = (x @ fit.centers.T)[np.arange(x.shape[0]), fit.labels]
    assert fit.cost == pytest.approx(float((1.0 - cos).sum()))
    again, _ = best_of_starts(x, K, seed=1, n_init=5, max_iter=40)
    assert np.array_equal(again.labels, fit.labels) and again.cost == fit.cost


def test_search_peaks_at_the_planted_k() -> None:
    x, _ = planted(seed=2)
    seen: list[int] = []
    scores = search_k(
        x * 3.0, range(3, 10), seed=0, n_init=5, max_iter=40, on_k=lambda k, c, s: seen.append(k)
    )
    assert list(scores) == seen == list(range(3, 10))
    assert max(scores, key=lambda k: scores[k][1]) == K  # rows are normalised: the scale does not matter
    fit, silhouette = scores[K]
    assert silhouette == pytest.approx(cosine_silhouette(normalize_rows(x), fit.labels), abs=1e-12)


def test_bad_k_is_named() -> None:
    x, _ = planted()
    with pytest.raises(ValueError, match="k must be in 1..180"):
        spherical_kmeans(x, 0, seed=0, max_iter=5)
    with pytest.raises(ValueError, match="k must be in 1..180"):
        spherical_kmeans(x, 181, seed=0, max_iter=5)
