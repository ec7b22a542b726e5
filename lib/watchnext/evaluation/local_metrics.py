"""The ranking metrics of ``evaluation/metrics.py`` on numpy arrays, for lists scored on the driver.

:func:`ranking_metrics_arrays` gives the same values as :func:`watchnext.evaluation.metrics.ranking_metrics`
(the definitions in that module's docstring: binary relevance, averaged over the truth users, a user
without a hit scoring 0) for recommendations and truth held as arrays. ALS tuning scores each trial's
validation lists with it when they are small enough to build on the driver (``models/tuning.py``),
instead of a few Spark jobs per trial.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
