"""Recommendation models: baselines, ALS (explicit, implicit, biased), batch top-K and tuning."""

from __future__ import annotations

from watchnext.models.als import (
    AlsParams,
    BiasedAlsModel,
    als_num_blocks,
    factor_frames,
    fit_als,
    fit_biased_als,
    implicit_value,
    predict,
    top_k_items,
)
from watchnext.models.baselines import (
    BiasModel,
    fit_biases,
    popularity_scores,
    predict_biases,
    trending_scores,
)
from watchnext.models.topk import top_positions, topk_from_factors, topk_from_item_scores
from watchnext.models.tuning import (
    Trial,
    TuningResult,
    refit,
    tune_als,
    tune_and_refit,
    tune_from_config,
    validation_split,
)

__all__ = [
    "AlsParams",
    "BiasModel",
    "BiasedAlsModel",
    "Trial",
    "TuningResult",
    "als_num_blocks",
    "factor_frames",
    "fit_als",
    "fit_biased_als",
    "fit_biases",
    "implicit_value",
    "popularity_scores",
    "predict",
    "predict_biases",
    "top_k_items",
    "refit",
    "top_positions",
    "topk_from_factors",
    "topk_from_item_scores",
    "trending_scores",
    "tune_als",
    "tune_and_refit",
    "tune_from_config",
    "validation_split",
]
