"""The blend's weight search: NDCG@K of the capped list on the driver, searched with Optuna.

The candidates of a sample of validation users are pooled once (``models/blend.py``); each trial is
then a weighted sum, the same capped top-K rule (:func:`watchnext.kernels.capped_rank`) and NDCG in
numpy, so a trial costs milliseconds, not a Spark job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from watchnext import progress
from watchnext.constants import COL_CLUSTER, COL_ITEM_IDX, COL_USER_IDX
from watchnext.kernels import capped_rank, weight_vector
from watchnext.models.blend import BACKFILL_EPS, COL_PRIOR, feature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuningData:
    """Validation candidate pools on the driver, as numpy arrays sorted by user.

    ``features``: ``(rows, n_sources)``; ``user``: a dense 0..U-1 code per row; ``item`` and ``cluster``
    (-1 - item when none) per row; ``relevant``: the row's item is held out for the user;
    ``n_relevant``: per user code, how many held-out items the user has (in the pool or not).
    """

    sources: tuple[str, ...]
    features: np.ndarray
    prior: np.ndarray
    user: np.ndarray
    item: np.ndarray
    cluster: np.ndarray
    relevant: np.ndarray
    n_relevant: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_pandas(
        cls, pdf: pd.DataFrame, n_relevant: pd.Series, sources: Sequence[str], extra: Sequence[str] = ()
    ) -> TuningData:
        """``pdf``: pool rows (user_idx, item_idx, cluster_id, relevant, f_<s>..., prior); ``n_relevant``:
        held-out item count indexed by user_idx (users with none are dropped); ``extra``: more columns
        of ``pdf`` kept in :attr:`extra`, in the rows' order."""
        pdf = pdf[pdf[COL_USER_IDX].isin(n_relevant.index)].sort_values([COL_USER_IDX, COL_ITEM_IDX])
        codes, uniques = pd.factorize(pdf[COL_USER_IDX], sort=True)
        item = pdf[COL_ITEM_IDX].to_numpy(np.int64)
        none = pdf[COL_CLUSTER].isna().to_numpy()
        cluster = np.where(none, -1 - item, pdf[COL_CLUSTER].fillna(0).to_numpy(np.int64))
        return cls(
            sources=tuple(sources),
            features=pdf[[feature(s) for s in sources]].to_numpy(np.float64),
            prior=pdf[COL_PRIOR].to_numpy(np.float64) if COL_PRIOR in pdf else np.zeros(len(pdf)),
            user=codes.astype(np.int64),
            item=item,
            cluster=cluster,
            relevant=pdf["relevant"].to_numpy(bool),
            n_relevant=n_relevant.reindex(uniques).to_numpy(np.int64),
            extra={c: pdf[c].to_numpy() for c in extra},
        )

    @property
    def n_users(self) -> int:
        return len(self.n_relevant)

    def without(self, source: str) -> TuningData:
        """The same pool with ``source``'s feature left out (its candidates stay in the pool, scored
        by the other sources: an ablation of the signal, not of the pool)."""
        keep = [j for j, s in enumerate(self.sources) if s != source]
        return replace(self, sources=tuple(self.sources[j] for j in keep), features=self.features[:, keep])


def ndcg_at_k(data: TuningData, weights: Mapping[str, float], k: int, max_per_cluster: int | None) -> float:
    """Mean NDCG@k over ``data``'s users of the capped top-k of the blended score (the same rule as
    :func:`select_top_n`, and the evaluator's NDCG: binary relevance, IDCG over min(k, |held-out|))."""
    score = data.features @ weight_vector(weights, data.sources) + BACKFILL_EPS * data.prior
    return ndcg_of_scores(data, score, k, max_per_cluster)


def ndcg_of_scores(data: TuningData, score: np.ndarray, k: int, max_per_cluster: int | None) -> float:
    """:func:`ndcg_at_k` of any score per row of ``data`` (e.g. a learned ranker's)."""
    rank = capped_rank(data.user, data.item, score, data.cluster, k, max_per_cluster)
    top = np.flatnonzero(rank)
    gain = data.relevant[top] / np.log2(rank[top] + 1.0)
    dcg = np.bincount(data.user[top], weights=gain, minlength=data.n_users)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = ideal[np.minimum(data.n_relevant, k) - 1]
    return float(np.mean(dcg / idcg))


@dataclass
class WeightSearch:
    weights: dict[str, float]
    value: float
    trials: list[tuple[dict[str, float], float]] = field(default_factory=list)
    single_source: dict[str, float] = field(default_factory=dict)


def tune_weights(
    data: TuningData,
    k: int,
    max_per_cluster: int | None,
    *,
    n_trials: int,
    seed: int,
    method: Literal["tpe", "random"] = "tpe",
    start: Mapping[str, float] | None = None,
    label: str | None = "blend weights",
    single: Mapping[str, float] | None = None,
) -> WeightSearch:
    """Weights in ``[0, 1]`` (the strongest single source fixed at 1, since only ratios matter)
    maximising :func:`ndcg_at_k`, with Optuna; the configured ``start`` and every single source are
    enqueued as the first trials, so the result is never worse than any of them on ``data``.
    ``label``: the search's name in the run's progress view (None: not reported). ``single``: each
    source's NDCG alone on ``data`` when already known (e.g. from the search an ablation repeats);
    the rest are computed. A trial whose weights equal a single source's is not scored again."""
    import optuna

    known = dict(single or {})
    single = {
        s: known[s] if s in known else ndcg_at_k(data, {s: 1.0}, k, max_per_cluster) for s in data.sources
    }
    anchor = max(single, key=lambda s: (single[s], -data.sources.index(s)))
    free = [s for s in data.sources if s != anchor]
    sampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(10, n_trials // 5))
        if method == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if start:
        top = float(start.get(anchor, 0.0)) or 1.0
        study.enqueue_trial({s: min(1.0, float(start.get(s, 0.0)) / top) for s in free})
    study.enqueue_trial({s: 0.0 for s in free})
    trials: list[tuple[dict[str, float], float]] = []

    def objective(trial: optuna.Trial) -> float:
        w = {anchor: 1.0, **{s: trial.suggest_float(s, 0.0, 1.0) for s in free}}
        alone = not any(w[s] for s in free)
        value = single[anchor] if alone else ndcg_at_k(data, w, k, max_per_cluster)
        trials.append((w, value))
        return value

    study.optimize(
        objective,
        n_trials=n_trials,
        callbacks=[progress.optuna_callback(label, n_trials, f"ndcg_at_{k}")] if label else [],
    )
    best = {anchor: 1.0, **{s: float(study.best_params[s]) for s in free}}
    return WeightSearch(weights=best, value=float(study.best_value), trials=trials, single_source=single)
