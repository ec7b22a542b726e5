"""The k of the genre clusters, searched on the driver: spherical k-means and its cosine silhouette.

The cluster search fits every ``k`` of a range ``n_init`` times and keeps the k with the best
silhouette (:mod:`watchnext.models.clusters`). On a catalogue that fits one machine (the content
vectors are sparse: ml-latest-small's 9,742 items are a few hundred kB), each of those fits is
milliseconds of sparse algebra, while the same fit as Spark jobs costs seconds of scheduling: 45 Spark
fits and 9 silhouettes took 80 s of a 2-core machine on the 1,000-item default, against 0.7 s here
(4.6 s for ml-latest-small). So up to ``clusters.search_max_items`` items the search runs here, and
the published model is a Spark ``KMeansModel`` holding the chosen fit's centres
(:func:`watchnext.models.clusters.fit_clusters`); beyond that size every k is fitted on Spark.

The geometry is Spark's ``KMeans(distanceMeasure="cosine")`` (spherical k-means): rows are
L2-normalised, a point joins the centre of highest cosine, a centre is the normalised sum of its
points, the cost is ``sum(1 - cos(x, centre))``. Starts are greedy k-means++ (distance ``1 - cos``) with a
seeded ``numpy`` generator, so the search is deterministic for a seed. Iteration stops when no
assignment changes or after ``max_iter``; a centre left without points keeps its place, as Spark's does.

:func:`cosine_silhouette` is the definition of Spark's ``ClusteringEvaluator`` with the cosine distance:
for point ``i`` of cluster ``A``, ``a(i)`` is its mean distance ``1 - cos`` to the other points of ``A``,
``b(i)`` the least mean distance to the points of another cluster, ``s(i) = 1 - a/b`` when ``a < b``,
``b/a - 1`` when ``a > b``, 0 when equal or when ``i`` is alone in ``A``; the score is the mean of
``s(i)``. With unit rows the cluster means come from the clusters' vector sums, so it is exact in
``O(nnz * k)``, not ``O(n^2)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class KMeansFit:
    """One spherical k-means fit: ``labels[i]`` in ``0..k-1``, unit ``centers`` (k x d), the cost."""

    labels: np.ndarray
    centers: np.ndarray
    cost: float
    iterations: int


def normalize_rows(x: sp.csr_matrix) -> sp.csr_matrix:
    """``x`` with every non-zero row scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ x)


def _memberships(labels: np.ndarray, k: int) -> sp.csr_matrix:
    n = len(labels)
    return sp.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def _plus_plus(x: sp.csr_matrix, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ starting centres with the distance ``1 - cos``: each next centre is the best of
    ``2 + log k`` candidates drawn in proportion to the distance (the one leaving the least total)."""
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(n))]
    dist = np.clip(1.0 - np.asarray(x @ x[chosen[0]].T.toarray()).ravel(), 0.0, None)
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:
            cand = rng.integers(n, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(dist), rng.random(trials) * total).clip(0, n - 1)
        cand_dist = np.minimum(dist[:, None], np.clip(1.0 - np.asarray((x @ x[cand].T).todense()), 0.0, None))
        best = int(cand_dist.sum(axis=0).argmin())
        chosen.append(int(cand[best]))
        dist = np.asarray(cand_dist[:, best]).ravel()
    return _unit(x[chosen].toarray())


def spherical_kmeans(x: sp.csr_matrix, k: int, seed: int, max_iter: int) -> KMeansFit:
    """Spherical k-means of the unit rows of ``x`` from one seeded k-means++ start."""
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in 1..{x.shape[0]} (the number of points), got {k}")
    rng = np.random.default_rng(seed)
    centers = _plus_plus(x, k, rng)
    labels = np.full(x.shape[0], -1)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        new = np.asarray(x @ centers.T).argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        sums = np.asarray((_memberships(labels, k) @ x).todense())
        filled = np.linalg.norm(sums, axis=1) > 0
        centers = np.where(filled[:, None], _unit(sums), centers)
    sims = np.asarray(x @ centers.T)
    cost = float((1.0 - sims[np.arange(x.shape[0]), labels]).sum())
    return KMeansFit(labels=labels, centers=centers, cost=cost, iterations=iterations)


def cosine_silhouette(x: sp.csr_matrix, labels: np.ndarray) -> float:
    """Spark's cosine silhouette of ``labels`` over the unit rows of ``x`` (module docstring)."""
    k = int(labels.max()) + 1
    member = _memberships(labels, k)
    sizes = np.asarray(member.sum(axis=1)).ravel()
    sums = np.asarray((member @ x).todense())
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_dist = 1.0 - np.asarray(x @ sums.T) / sizes  # n x k; empty clusters -> nan
    rows = np.arange(x.shape[0])
    own_size = sizes[labels]
    alone = own_size <= 1
    a = mean_dist[rows, labels] * own_size / np.where(alone, 1.0, own_size - 1.0)
    others = np.where(sizes[None, :] > 0, mean_dist, np.inf)
    others[rows, labels] = np.inf
    b = others.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # the branch np.where does not take
        s = np.where(a < b, 1.0 - a / b, np.where(a > b, b / a - 1.0, 0.0))
    s[alone | ~np.isfinite(b)] = 0.0
    return float(s.mean())


def best_of_starts(
    x: sp.csr_matrix, k: int, seed: int, n_init: int, max_iter: int
) -> tuple[KMeansFit, list[float]]:
    """The lowest-cost fit of ``n_init`` starts (seeds ``seed .. seed + n_init - 1``; ties: the first)
    and every start's cost."""
    fits = [spherical_kmeans(x, k, seed + i, max_iter) for i in range(n_init)]
    costs = [f.cost for f in fits]
    low = min(costs)
    return next(f for f in fits if f.cost <= low + 1e-9 * abs(low)), costs


def search_k(
    x: sp.csr_matrix,
    ks: Sequence[int],
    *,
    seed: int,
    n_init: int,
    max_iter: int,
    on_k: Callable[[int, list[float], float], None] | None = None,
) -> dict[int, tuple[KMeansFit, float]]:
    """``k -> (the best of n_init starts, its silhouette)`` for every ``k`` in ``ks`` (in that order);
    ``on_k(k, costs of the starts, silhouette)`` after each."""
    x = normalize_rows(sp.csr_matrix(x, dtype=np.float64))
    out: dict[int, tuple[KMeansFit, float]] = {}
    for k in ks:
        fit, costs = best_of_starts(x, k, seed, n_init, max_iter)
        out[k] = fit, cosine_silhouette(x, fit.labels)
        if on_k is not None:
            on_k(k, costs, out[k][1])
    return out
