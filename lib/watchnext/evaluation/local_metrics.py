"""The metrics of ``evaluation/metrics.py`` and ``beyond_accuracy.py`` on numpy arrays, for lists
scored or collected on the driver.

:func:`ranking_metrics_arrays` gives the same values as :func:`watchnext.evaluation.metrics.ranking_metrics`
(the definitions in that module's docstring: binary relevance, averaged over the truth users, a user
without a hit scoring 0) for recommendations and truth held as arrays. ALS tuning scores each trial's
validation lists with it when they are small enough to build on the driver (``models/tuning.py``),
instead of a few Spark jobs per trial; the evaluate stage scores every model with
:func:`evaluate_all_arrays` when the lists fit on the driver (``evaluation.local_max_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from watchnext.evaluation.beyond_accuracy import TrainStats, list_diversity
from watchnext.kernels import run_position, run_starts


def ranking_metrics_arrays(
    rec_user: np.ndarray,
    rec_item: np.ndarray,
    rec_rank: np.ndarray,
    truth_user: np.ndarray,
    truth_item: np.ndarray,
    ks: Sequence[int],
) -> dict[str, float]:
    """Precision, recall, NDCG, MAP, MRR and hit rate at each of ``ks`` of the lists ``(rec_user,
    rec_item, rec_rank)`` (ranks 1.., one row per (user, item)) against the relevant pairs
    ``(truth_user, truth_item)`` (duplicates count once). Raises ``ValueError`` without truth."""
    ks = sorted(set(ks))
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    pairs = np.unique(np.stack([truth_user.astype(np.int64), truth_item.astype(np.int64)], axis=1), axis=0)
    if not len(pairs):
        raise ValueError("truth has no user with a relevant item; ranking metrics are undefined")
    users, n_rel = np.unique(pairs[:, 0], return_counts=True)
    keep = rec_rank <= ks[-1]
    ru, ri, rr = rec_user[keep].astype(np.int64), rec_item[keep].astype(np.int64), rec_rank[keep]
    # a recommended pair is a hit when it is a truth pair: (user, item) as one int64 key, searched
    span = int(max(pairs[:, 1].max(), ri.max(initial=0))) + 1
    truth_keys = pairs[:, 0] * span + pairs[:, 1]  # sorted: np.unique sorted the pairs
    pos = np.minimum(np.searchsorted(truth_keys, ru * span + ri), len(truth_keys) - 1)
    hit = truth_keys[pos] == ru * span + ri
    hu, hr = ru[hit], rr[hit].astype(np.float64)
    order = np.lexsort((hr, hu))
    hu, hr = hu[order], hr[order]
    cum = run_position(run_starts(hu)) + 1.0  # hits up to and including this one
    row = np.searchsorted(users, hu)
    n_users = len(users)
    out: dict[str, float] = {}
    first = np.full(n_users, np.inf)
    np.minimum.at(first, row, hr)
    for kk in ks:
        within = hr <= kk
        hits = np.bincount(row[within], minlength=n_users).astype(np.float64)
        dcg = np.bincount(row[within], weights=1.0 / np.log2(hr[within] + 1.0), minlength=n_users)
        ap = np.bincount(row[within], weights=cum[within] / hr[within], minlength=n_users)
        ideal = np.cumsum(1.0 / np.log2(np.arange(2, kk + 2)))[np.minimum(n_rel, kk) - 1]
        out |= {
            f"precision_at_{kk}": float(np.mean(hits / kk)),
            f"recall_at_{kk}": float(np.mean(hits / n_rel)),
            f"ndcg_at_{kk}": float(np.mean(dcg / ideal)),
            f"map_at_{kk}": float(np.mean(ap / n_rel)),
            f"mrr_at_{kk}": float(np.mean(np.where(first <= kk, 1.0 / first, 0.0))),
            f"hit_rate_at_{kk}": float(np.mean(hits > 0)),
        }
    return out


def top_k_arrays(
    user: np.ndarray, item: np.ndarray, key: np.ndarray, k: int, *, ascending: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``metrics.top_k`` on arrays: each (user, item) once at its best ``key`` (a rank, ``ascending``,
    or a score), then ranks ``1..k`` per user by that key, ties to the smaller item. Returns
    ``(user, item, rank)`` sorted by user and rank."""
    if k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    key = np.asarray(key, np.float64) if ascending else -np.asarray(key, np.float64)
    order = np.lexsort((key, item, user))  # the best key of each (user, item) first
    u, i, v = user[order], item[order], key[order]
    first = run_starts(u, i)
    u, i, v = u[first], i[first], v[first]
    order = np.lexsort((i, v, u))
    u, i = u[order], i[order]
    rank = run_position(run_starts(u)) + 1
    keep = rank <= k
    return u[keep], i[keep], rank[keep]


@dataclass(frozen=True)
class LocalTrainStats:
    """``TrainStats`` on the driver: per train item (sorted ids) its distinct users and rows."""

    items: np.ndarray
    users_per_item: np.ndarray
    rows_per_item: np.ndarray
    n_users: int

    @property
    def n_items(self) -> int:
        return len(self.items)

    @classmethod
    def of(cls, stats: TrainStats) -> LocalTrainStats:
        """The Spark aggregates collected (item-sized)."""
        per_item: pd.DataFrame = stats.items.toPandas()
        per_item = per_item.sort_values(stats.col_item)
        return cls(
            items=per_item[stats.col_item].to_numpy(np.int64),
            users_per_item=per_item["_u"].to_numpy(np.float64),
            rows_per_item=per_item["_p"].to_numpy(np.int64),
            n_users=stats.n_users,
        )


def beyond_accuracy_arrays(
    user: np.ndarray,
    item: np.ndarray,
    k: int,
    stats: LocalTrainStats,
    n_items: int | None,
    features: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    head_share: float = 0.8,
) -> dict[str, float]:
    """``metrics.evaluate_all``'s beyond-accuracy part on top-``k`` lists as arrays: coverage, novelty,
    exposure Gini, long-tail share (``beyond_accuracy``'s definitions) and ILD (``features``: the
    ``beyond_accuracy.feature_table`` of the items)."""
    out: dict[str, float] = {}
    n_catalog = n_items if n_items is not None else stats.n_items
    distinct = np.unique(item)
    if n_catalog:
        out[f"catalog_coverage_at_{k}"] = len(distinct) / float(n_catalog)
    pos = np.minimum(np.searchsorted(stats.items, item), max(stats.n_items - 1, 0))
    known = stats.items[pos] == item if stats.n_items else np.zeros(len(item), bool)
    info = -np.log2(stats.users_per_item[pos[known]] / float(stats.n_users))
    out[f"novelty_at_{k}"] = float(np.mean(info)) if len(info) else float("nan")
    # exposure Gini over the catalogue, never-recommended items at 0
    n = n_items if n_items is not None else len(np.union1d(stats.items, distinct))
    exposure = np.sort(np.unique(item, return_counts=True)[1]).astype(np.float64)
    if len(exposure) > n:
        raise ValueError(f"n_items={n} is smaller than the {len(exposure)} distinct recommended items")
    x = np.concatenate([np.zeros(n - len(exposure)), exposure])
    total = x.sum()
    out[f"exposure_gini_at_{k}"] = (
        float(np.sum((2.0 * np.arange(1, n + 1) - n - 1) * x) / (n * total)) if total else float("nan")
    )
    # the head: train items by rows desc (ties: item asc) while the rows before them are < share x total
    by_pop = np.lexsort((stats.items, -stats.rows_per_item))
    rows = stats.rows_per_item[by_pop].astype(np.float64)
    before = np.concatenate([[0.0], np.cumsum(rows)[:-1]])
    head = np.sort(stats.items[by_pop][before < head_share * rows.sum()])
    hpos = np.minimum(np.searchsorted(head, item), max(len(head) - 1, 0))
    in_head = head[hpos] == item if len(head) else np.zeros(len(item), bool)
    out[f"long_tail_share_at_{k}"] = float(np.mean(~in_head)) if len(item) else float("nan")
    if features is not None:
        users, ild = list_diversity(user, item, *features)
        out[f"ild_at_{k}"] = float(np.mean(ild)) if len(ild) else float("nan")
    return out


def evaluate_all_arrays(
    user: np.ndarray,
    item: np.ndarray,
    key: np.ndarray,
    *,
    key_is_rank: bool,
    truth_user: np.ndarray,
    truth_item: np.ndarray,
    k: int,
    ranking_ks: Sequence[int],
    stats: LocalTrainStats,
    n_items: int | None,
    features: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> dict[str, float]:
    """``metrics.evaluate_all`` of one list (rows ``(user, item)`` with a rank or a score) on arrays:
    the ranking metrics at ``k`` and ``ranking_ks`` and the beyond-accuracy ones at ``k``; the same
    values (the evaluate stage takes this path when the lists fit on the driver)."""
    ks = sorted({k, *ranking_ks})
    u, i, r = top_k_arrays(user, item, key, ks[-1], ascending=key_is_rank)
    out = ranking_metrics_arrays(u, i, r, truth_user, truth_item, ks)
    within = r <= k
    return out | beyond_accuracy_arrays(u[within], i[within], k, stats, n_items, features)
