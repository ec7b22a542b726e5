"""What the data can feed (data_profile.py): the time and content profiles, and the sources left out."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import SparkSession

from watchnext import data_profile
from watchnext.config import RecommendConfig
from watchnext.summary import left_out_lines

EVENTS = "user_idx int, item_idx int, timestamp timestamp"
T0 = dt.datetime(2024, 1, 1, 12, 0)


def test_time_profile_counts_the_timestamps_and_their_span(spark: SparkSession) -> None:
    rows = [(0, 1, T0), (0, 2, None), (1, 1, T0 + dt.timedelta(days=40)), (2, 3, None)]
    p = data_profile.time_profile(spark.createDataFrame(rows, EVENTS))
    assert p == data_profile.TimeProfile(4, 2, T0, T0 + dt.timedelta(days=40))
    assert p.span_days == 40.0
    none = data_profile.time_profile(spark.createDataFrame([(0, 1, None)], EVENTS))
    assert none == data_profile.TimeProfile(1, 0, None, None)
    assert none.span_days == 0.0


def test_trending_is_left_out_without_time_or_when_the_window_holds_everything() -> None:
    untimed = data_profile.TimeProfile(10, 0, None, None)
    assert "no interaction has a timestamp" in str(data_profile.trending_unusable(untimed, 30))
    short = data_profile.TimeProfile(10, 10, T0, T0 + dt.timedelta(days=30))
    assert "spans 30.0 days, inside the 30-day trending window" in str(
        data_profile.trending_unusable(short, 30)
    )
    longer = data_profile.TimeProfile(10, 3, T0, T0 + dt.timedelta(days=30, seconds=1))
    assert data_profile.trending_unusable(longer, 30) is None


def test_session_note_says_what_the_timestamps_leave() -> None:
    assert data_profile.session_note(data_profile.TimeProfile(5, 0, None, None)) == (
        "EASE session term off: no interaction has a timestamp"
    )
    assert data_profile.session_note(data_profile.TimeProfile(5, 3, T0, T0)) == (
        "EASE session term from the 3 of 5 interactions with a timestamp"
    )
    assert data_profile.session_note(data_profile.TimeProfile(5, 5, T0, T0)) is None


def test_content_is_thin_below_the_coverage_threshold() -> None:
    assert data_profile.content_unusable(0.5, 0.5) is None
    assert data_profile.content_unusable(0.49, 0.5) == (
        "49% of the items have a genre or tag (content.min_coverage 50%), "
        "so content neighbours would rest on titles alone"
    )


def test_left_out_sources_leave_the_sources_the_weights_and_the_cold_weights() -> None:
    rc = RecommendConfig()
    untimed = data_profile.TimeProfile(10, 0, None, None)
    left = data_profile.recommend_left_out(rc, untimed, 30)
    assert list(left) == ["trending"]
    thin = data_profile.recommend_without(rc, left)
    assert thin.sources == [s for s in rc.sources if s != "trending"]
    assert thin.cold_weights == {"cluster": 1.0, "popular": 0.1}
    assert thin.weights == rc.weights  # trending had no weight there
    assert thin.model_dump(exclude={"sources", "cold_weights"}) == rc.model_dump(
        exclude={"sources", "cold_weights"}
    )
    # data with time over more than the window: nothing is left out, the config is the same object
    timed = data_profile.TimeProfile(10, 10, T0, T0 + dt.timedelta(days=90))
    assert data_profile.recommend_left_out(rc, timed, 30) == {}
    assert data_profile.recommend_without(rc, {}) is rc
    # only trending to backfill, and it cannot work: an error that says what to do
    only = RecommendConfig(sources=["als", "trending"], weights={"als": 1.0}, cold_weights={"trending": 1.0})
    with pytest.raises(ValueError, match="nothing left to backfill.*add 'popular'"):
        data_profile.recommend_without(only, data_profile.recommend_left_out(only, untimed, 30))
    # cold weights that were only trending fall back to popularity
    cold = RecommendConfig(cold_weights={"trending": 1.0})
    assert data_profile.recommend_without(cold, left).cold_weights == {"popular": 1.0}


def test_the_run_summary_lists_each_left_out_source_once_with_its_stages() -> None:
    results = {
        "similarities": {"left_out": {"content": "0% of the items have a genre or tag"}},
        "recommend": {"left_out": {"trending": "no timestamp"}, "notes": ["EASE session term off"]},
        "evaluate": {"left_out": {"trending": "no timestamp (evaluate)"}},
        "report": {},
    }
    assert left_out_lines(results) == [
        "content left out (similarities): 0% of the items have a genre or tag",
        "trending left out (recommend, evaluate): no timestamp",
        "recommend: EASE session term off",
    ]
