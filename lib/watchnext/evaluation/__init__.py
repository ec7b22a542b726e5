"""Offline evaluation: deterministic train/test splits and top-K / beyond-accuracy metrics in Spark."""

from __future__ import annotations

from watchnext.evaluation.metrics import (
    TrainStats,
    catalog_coverage,
    evaluate_all,
    intra_list_diversity,
    novelty,
    popularity_bias,
    ranking_metrics,
    rmse_mae,
    top_k,
)
from watchnext.evaluation.splits import (
    leave_last_n_split,
    pair_hash,
    random_split,
    split_summary,
    stratified_split,
    time_split,
)

__all__ = [
    "TrainStats",
    "catalog_coverage",
    "evaluate_all",
    "intra_list_diversity",
    "leave_last_n_split",
    "novelty",
    "pair_hash",
    "popularity_bias",
    "random_split",
    "ranking_metrics",
    "rmse_mae",
    "split_summary",
    "stratified_split",
    "time_split",
    "top_k",
]
