"""What the run's data can feed: sources that cannot work on it are left out, with the reason.

A source run on data that cannot feed it does not fail, it degenerates, and its output looks like a
real source's: trending without timestamps is popularity to the last digit, and it would still be
tuned into the blend, scored by the evaluate stage and shown in the report as if it were one. So each
stage that uses such a source first asks what the data has, and leaves the source out with a reason
that goes to the log, the stage's summary and MLflow.

* **Time** (:class:`TimeProfile`, one aggregation over the interactions): how many interactions have a
  timestamp, and the first and last one.

  - ``trending`` is left out when no interaction has a timestamp, or when the whole history fits in
    the trending window (``evaluation.trending_window_days``): every item's window count is then its
    total count, so trending *is* popularity.
  - EASE's session term (``recommend.ease.session_weight``) is built from the interactions that have a
    timestamp (``models/ease.py``); with none it adds nothing, and the summary says it is off.

* **Content** (``content_coverage``, from ``models/cluster_features.py``): the share of the run's items
  with at least one genre or tag. Titles alone do not count: a name says nothing about what an item is
  like. ``content`` neighbours
  (``similarity.sources``) are left out when the coverage is below ``content.min_coverage``; the
  clusters stage clusters on behaviour there (``clusters.features: auto``).

:func:`recommend_without` gives the recommend config with the left-out sources removed from the
sources, the weights and the cold weights, so every later step (candidates, weight search, learned
ranker features, offline lists) runs on the sources that can work.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from watchnext.checks import require_columns
from watchnext.config import RecommendConfig
from watchnext.constants import COL_TIMESTAMP
from watchnext.models.cluster_features import content_coverage

__all__ = [
    "TimeProfile",
    "content_coverage",
    "content_unusable",
    "recommend_left_out",
    "recommend_without",
    "session_note",
    "time_profile",
    "trending_unusable",
]

TRENDING = "trending"
CONTENT = "content"


@dataclass(frozen=True)
class TimeProfile:
    """How much of the interactions carries time."""

    interactions: int
    timestamped: int
    first: dt.datetime | None
    last: dt.datetime | None

    @property
    def span_days(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return (self.last - self.first).total_seconds() / 86400.0


def time_profile(interactions: DataFrame, *, col_timestamp: str = COL_TIMESTAMP) -> TimeProfile:
    """One aggregation: the row count, the rows with a timestamp, the first and last timestamp."""
    require_columns(interactions, [col_timestamp], "interactions")
    ts = F.col(col_timestamp)
    row = interactions.agg(
        F.count(F.lit(1)).alias("n"), F.count(ts).alias("t"), F.min(ts).alias("lo"), F.max(ts).alias("hi")
    ).head()
    assert row is not None
    return TimeProfile(int(row["n"]), int(row["t"]), row["lo"], row["hi"])


def trending_unusable(profile: TimeProfile, window_days: float) -> str | None:
    """Why trending cannot work on data with ``profile`` (None when it can)."""
    if profile.timestamped == 0:
        return "no interaction has a timestamp, so trending would be popularity"
    if profile.span_days <= window_days:
        return (
            f"the history spans {profile.span_days:.1f} days, inside the {window_days:g}-day trending "
            "window, so trending would be popularity"
        )
    return None


def session_note(profile: TimeProfile) -> str | None:
    """What the data leaves of EASE's session term (None: every interaction has a timestamp)."""
    if profile.timestamped == 0:
        return "EASE session term off: no interaction has a timestamp"
    missing = profile.interactions - profile.timestamped
    if missing:
        return (
            f"EASE session term from the {profile.timestamped} of {profile.interactions} interactions "
            "with a timestamp"
        )
    return None


def content_unusable(coverage: float, min_coverage: float) -> str | None:
    """Why content neighbours cannot work with this genre/tag ``coverage`` (None when they can)."""
    if coverage < min_coverage:
        return (
            f"{coverage:.0%} of the items have a genre or tag (content.min_coverage {min_coverage:.0%}), "
            "so content neighbours would rest on titles alone"
        )
    return None


def recommend_left_out(rc: RecommendConfig, time: TimeProfile, window_days: float) -> dict[str, str]:
    """The configured recommend sources (and cold-start sources) the data cannot feed, with why."""
    out: dict[str, str] = {}
    configured = set(rc.sources) | set(rc.cold_weights) | set(rc.weights)
    if TRENDING in configured:
        why = trending_unusable(time, window_days)
        if why:
            out[TRENDING] = why
    return out


def recommend_without(rc: RecommendConfig, left_out: dict[str, str]) -> RecommendConfig:
    """``rc`` without the ``left_out`` sources: not in the sources, the weights or the cold weights.

    Raises when nothing would be left to backfill the lists (popular and trending both gone)."""
    if not left_out:
        return rc
    sources = [s for s in rc.sources if s not in left_out]
    if "popular" not in sources and "trending" not in sources:
        gone = ", ".join(f"{s} ({why})" for s, why in left_out.items())
        raise ValueError(
            f"recommend.sources has nothing left to backfill the lists: {gone}; "
            "add 'popular' to recommend.sources"
        )
    weights = {s: w for s, w in rc.weights.items() if s not in left_out}
    cold = {s: w for s, w in rc.cold_weights.items() if s not in left_out}
    if not cold:
        cold = {"popular": 1.0} if "popular" in sources else {"trending": 1.0}
    return rc.model_copy(update={"sources": sources, "weights": weights, "cold_weights": cold})
