"""The published reasons in the words of ``domain:`` (config.DomainConfig): a music catalogue's reasons
on a hand-made scored list, and the defaults, which must give the movie wording to the character."""

from __future__ import annotations

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.config import DomainConfig
from watchnext.recommend import publish

pytestmark = [pytest.mark.spark]

MUSIC = DomainConfig(
    verb="listened to", users="Listeners", service="jazzstream", item="artist", items="artists"
)
ARTISTS = [
    "Nina Simone", "Miles Davis", "John Coltrane", "Bill Evans", "Chet Baker", "Ella Fitzgerald",
    "Billie Holiday", "Art Blakey", "Sonny Rollins",
]  # fmt: skip
# (user_idx, rank, item_idx, dominant source, anchor_idx, cluster_id): every branch of publish.reason
TOP = [
    (0, 1, 1, "item", 0, 1),  # an item-item pick with its anchor
    (0, 2, 2, "als", 0, 1),  # a latent pick explained by its item-item anchor
    (0, 3, 3, "als", None, 1),  # a latent pick without one
    (0, 4, 4, "user", None, 1),
    (0, 5, 5, "cluster", None, 0),  # a cluster with a label
    (1, 1, 6, "cluster", None, 7),  # a cluster without one: the popular reason
    (1, 2, 7, "trending", None, 1),
    (1, 3, 8, "backfill", None, 1),
    (1, 4, 0, "item", None, 1),  # an item-item pick whose anchor is unknown: the popular reason
    (1, 5, 1, "popular", None, 1),
    (1, 6, 3, "cluster", None, 2),  # a behavioural cluster: named by its members
]
OUT = (
    "user_id string, user_idx int, rank int, item_id string, title string, score double, reason string, "
    "sources array<string>, model_versions map<string,string>"
)


def _decorated(spark: SparkSession, domain: DomainConfig | None) -> DataFrame:
    top = spark.createDataFrame(
        [(u, i, r, 1.0 - r / 10, [d], d, a, c) for u, r, i, d, a, c in TOP],
        "user_idx int, item_idx int, rank int, score float, sources array<string>, dominant string, "
        "anchor_idx int, cluster_id int",
    )
    users = spark.createDataFrame([("u0", 0), ("u1", 1)], "user_id string, user_idx int")
    items = spark.createDataFrame(
        [(f"a{i}", i, t) for i, t in enumerate(ARTISTS)], "item_id string, item_idx int, title string"
    )
    labels = spark.createDataFrame(
        [(0, "Cool jazz"), (1, None), (2, "Fans of Nina Simone, Miles Davis")], "cluster_id int, label string"
    )
    return publish.decorate(top, users, items, labels, {"als": "3"}, domain)


def _expected(spark: SparkSession, reasons: list[str]) -> DataFrame:
    rows = [
        (f"u{u}", u, r, f"a{i}", ARTISTS[i], 1.0 - r / 10, why, [d], {"als": "3"})
        for (u, r, i, d, _, _), why in zip(TOP, reasons, strict=True)
    ]
    return spark.createDataFrame(rows, OUT)


def test_reasons_speak_the_configured_words(spark: SparkSession) -> None:
    got = _decorated(spark, MUSIC)
    expected = _expected(
        spark,
        [
            "Because you listened to Nina Simone",
            "Because you listened to Nina Simone",
            "Picked for your taste",
            "Listeners with similar taste listened to this",
            "Popular in Cool jazz",
            "Popular on jazzstream",
            "Trending now",
            "Popular on jazzstream",
            "Popular on jazzstream",
            "Popular on jazzstream",
            "Popular with fans of Nina Simone, Miles Davis",
        ],
    )
    assertDataFrameEqual(got, expected, rtol=1e-6)


def test_default_words_are_the_movie_wording(spark: SparkSession) -> None:
    """The defaults (of the schema and of a call without ``domain``) give today's text exactly."""
    assert DomainConfig() == DomainConfig(
        verb="watched", users="Viewers", service="watchnext", item="title", items="items"
    )
    assert publish.because_prefix() == publish.because_prefix(DomainConfig()) == "Because you watched "
    assert (
        publish.reason_texts()
        == publish.reason_texts(DomainConfig())
        == {
            "user": "Viewers with similar taste watched this",
            "trending": "Trending now",
            "popular": "Popular on watchnext",
            "backfill": "Popular on watchnext",
            "als": "Picked for your taste",
            "ease": "Picked for your taste",
            "ncf": "Picked for your taste",
        }
    )
    expected = _expected(
        spark,
        [
            "Because you watched Nina Simone",
            "Because you watched Nina Simone",
            "Picked for your taste",
            "Viewers with similar taste watched this",
            "Popular in Cool jazz",
            "Popular on watchnext",
            "Trending now",
            "Popular on watchnext",
            "Popular on watchnext",
            "Popular on watchnext",
            "Popular with fans of Nina Simone, Miles Davis",
        ],
    )
    assertDataFrameEqual(_decorated(spark, None), expected, rtol=1e-6)
    assertDataFrameEqual(_decorated(spark, DomainConfig()), expected, rtol=1e-6)


def test_because_lists_and_reason_mix_follow_the_verb(spark: SparkSession) -> None:
    sims = spark.createDataFrame(
        [("a0", 0, 1, "a1", 1, 0.9, "cooccurrence"), ("a0", 0, 2, "a2", 2, 0.5, "cooccurrence")],
        "item_id string, item_idx int, rank int, neighbor_id string, neighbor_idx int, score double, "
        "source string",
    )
    items = spark.createDataFrame([(i, t) for i, t in enumerate(ARTISTS[:3])], "item_idx int, title string")
    got = publish.because_you_watched(sims, items, "cooccurrence", 10, MUSIC)
    expected = spark.createDataFrame(
        [
            ("a0", 0, 1, "a1", 1, "Miles Davis", 0.9, "cooccurrence", "Because you listened to Nina Simone"),
            (
                "a0",
                0,
                2,
                "a2",
                2,
                "John Coltrane",
                0.5,
                "cooccurrence",
                "Because you listened to Nina Simone",
            ),
        ],
        "item_id string, item_idx int, rank int, neighbor_id string, neighbor_idx int, title string, "
        "score double, source string, reason string",
    )
    assertDataFrameEqual(got, expected)

    # the kinds group the anchored and the cluster reasons of the configured verb, not of the default one
    mix = publish.reason_mix(_decorated(spark, MUSIC), MUSIC)
    assert mix == {
        "Popular on jazzstream": round(4 / 11, 4),
        "Because you listened to ...": round(2 / 11, 4),
        "Picked for your taste": round(1 / 11, 4),
        "Listeners with similar taste listened to this": round(1 / 11, 4),
        "Popular in ...": round(1 / 11, 4),
        "Trending now": round(1 / 11, 4),
        "Popular with fans of ...": round(1 / 11, 4),
    }
    assert list(mix)[:2] == ["Popular on jazzstream", "Because you listened to ..."]
    # the default verb does not recognise another verb's reasons as anchored ones
    assert "Because you watched ..." not in publish.reason_mix(_decorated(spark, MUSIC))


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("verb", "", "non-empty"),
        ("users", "   ", "non-empty"),
        ("service", " watchnext", "whitespace"),
        ("item", "title\n", "whitespace"),
        ("users", "Shoppers/Buyers", "MLflow metrics"),
        ("verb", "read:", "MLflow metrics"),
    ],
)
def test_words_are_checked(key: str, value: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"{key}(.|\n)*{why}"):
        DomainConfig.model_validate({key: value})


def test_exactly_n_refuses_a_short_or_repeated_list_and_names_the_user(spark: SparkSession) -> None:
    users = spark.createDataFrame([("a", 0), ("b", 1), ("c", 2)], "user_id string, user_idx int")
    full = [(u, i) for u in (0, 1, 2) for i in range(3)]
    top = spark.createDataFrame(full, "user_idx int, item_idx int")
    assert publish.check_exactly_n(top, users, 3) == {"users": 3, "items_per_user": 3}
    short = spark.createDataFrame([r for r in full if r != (1, 2)], "user_idx int, item_idx int")
    with pytest.raises(RuntimeError, match=r"^1 users would get .* e\.g\. b \(2 items\)"):
        publish.check_exactly_n(short, users, 3)
    repeated = spark.createDataFrame(
        [r if r != (2, 2) else (2, 1) for r in full], "user_idx int, item_idx int"
    )
    with pytest.raises(RuntimeError, match=r"^1 users would get .* e\.g\. c \(2 items\)"):
        publish.check_exactly_n(repeated, users, 3)
    missing = spark.createDataFrame([r for r in full if r[0] != 0], "user_idx int, item_idx int")
    with pytest.raises(RuntimeError, match=r"e\.g\. a \(0 items\)"):
        publish.check_exactly_n(missing, users, 3)
