"""Synthetic interactions with planted structure, for tests and benchmarks.

The generative model (every draw comes from numpy generators seeded by ``SyntheticConfig.seed``):

* **Items.** ``n_items`` items are split over ``n_clusters`` latent genre clusters (sizes differ by at
  most one). A cluster has 2-3 dominant MovieLens genres (its lead genre is distinct across clusters
  while there are genres left) and its own tag vocabulary ``c<k>-tag<j>``. An item carries its
  cluster's lead genre, each other dominant genre with probability 0.85 and, with probability 0.15,
  one random genre; ``tags_per_item`` distinct tags, about 90% of them from its cluster's vocabulary
  and the rest from a small shared one. Within a cluster item popularity is Zipf with exponent
  ``popularity_exponent`` over a random rank order; a cluster's mass is proportional to its size.
* **Users.** Each user has a primary cluster and a different, weaker secondary one (uniform), and a
  number of interactions ``5 + round(LogNormal)`` with mean ``mean_interactions_per_user`` (at least 5,
  at most the catalogue). Of those, ``Binomial(n, in_cluster_share)`` come from the primary cluster;
  the rest are split evenly between the secondary cluster and the global popularity distribution
  restricted to the *other* clusters, so the share inside the primary cluster is exactly the planted
  one in expectation (capacity permitting: a user who wants more than a cluster holds overflows to the
  other sources). Items are drawn by popularity without replacement (successive sampling), so there
  are no duplicate (user, item) pairs.
* **Ratings** ``clip(round2(3 + affinity + user bias + item quality + noise), 0.5, 5)`` on the 0.5
  grid, with affinity +0.75 in the primary cluster, +0.25 in the secondary and -0.5 elsewhere.
  **Timestamps** are uniform epoch seconds in ``[start_date, start_date + days)``.
* **Play counts** (``play_counts``, off by default; implicit feedback, so ``ingest.feedback: implicit``):
  the rating is replaced by ``1 + Poisson(PLAY_BASE * activity_u * play_count_ratio ** (latent - 3))``
  with ``latent`` the unrounded, unclipped rating above and ``activity_u`` LogNormal(0, 1) per user
  (heavy listeners): counts grow geometrically with the preference, so the user's own cluster gets
  about ``play_count_ratio ** 1.25`` times the counts of incidental items, and the raw counts are
  heavy-tailed across users (what the ALS ``log`` confidence is for). Drawn after everything else, so
  with the option off not a single row changes.

Users are generated in fixed blocks of ``users_per_block`` consecutive ids, each block with its own
seed derived from ``(seed, block)``, inside ``mapInPandas`` over ``spark.range`` of the user ids: the
output for a seed does not depend on ``partitions`` or on the number of executor cores (the block size
is part of the seed). Only the item side (at most ~1e5 rows) is built on the driver.
"""

from __future__ import annotations

import calendar
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.config import SyntheticConfig
from watchnext.constants import (
    COL_CORRUPT,
    COL_GENRES,
    COL_ITEM,
    COL_RATING,
    COL_TAGS,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_YEAR,
)
from watchnext.ingest.raw import EPOCH_SECONDS, RAW_INTERACTIONS_SCHEMA, RAW_ITEMS_SCHEMA, RawSource

log = logging.getLogger(__name__)

SOURCE_NAME = "synthetic"
COL_CLUSTER = "cluster_id"

GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Tags any item may carry whatever its cluster (the noise in the tag signal).
SHARED_TAGS: tuple[str, ...] = (
    "atmospheric", "based on a book", "classic", "dark", "funny", "great soundtrack", "quirky",
    "slow", "twist ending", "visually appealing",
)  # fmt: skip

USERS_PER_BLOCK = 1024
MIN_INTERACTIONS = 5
SECONDARY_SHARE = 0.5  # of the interactions that are not in the primary cluster
LOGNORMAL_SIGMA = 1.0  # heavy-ish tail of interactions per user
KEEP_DOMINANT_GENRE = 0.85
EXTRA_GENRE = 0.15
CLUSTER_TAG_SHARE = 0.9
BASE_RATING = 3.0
AFFINITY = (0.75, 0.25, -0.5)  # primary, secondary, other clusters
USER_BIAS_SD = 0.3
ITEM_QUALITY_SD = 0.25
RATING_NOISE_SD = 0.6
FIRST_YEAR = 1950
PLAY_BASE = 2.0  # mean extra plays at a latent rating of BASE_RATING for an average user
PLAY_ACTIVITY_SD = 1.0  # log-scale spread of users' listening activity

# Independent random streams: SeedSequence(seed, spawn_key=(stream, ...)).
_ITEMS, _PROFILES, _EVENTS = 0, 1, 2

ITEM_CLUSTERS_SCHEMA = T.StructType(
    [T.StructField(COL_ITEM, T.StringType()), T.StructField(COL_CLUSTER, T.IntegerType())]
)
USER_CLUSTERS_SCHEMA = T.StructType(
    [T.StructField(COL_USER, T.StringType()), T.StructField(COL_CLUSTER, T.IntegerType())]
)
CLUSTERS_SCHEMA = T.StructType(
    [
        T.StructField(COL_CLUSTER, T.IntegerType()),
        T.StructField("name", T.StringType()),
        T.StructField(COL_GENRES, T.ArrayType(T.StringType())),  # dominant genres, lead genre first
        T.StructField("tag_vocabulary", T.ArrayType(T.StringType())),
        T.StructField("n_items", T.IntegerType()),
    ]
)
_ITEMS_WITH_CLUSTER = T.StructType([*RAW_ITEMS_SCHEMA.fields, T.StructField(COL_CLUSTER, T.IntegerType())])
_PROFILE_DDL = "user long, primary int, secondary int, n long"
_EVENTS_DDL = "user long, item long, rating double, ts long"


@dataclass(frozen=True)
class SyntheticData:
    """A synthetic source plus the ground truth that was planted in it."""

    source: RawSource  # name "synthetic"; raw string interactions and items, epoch seconds
    item_clusters: DataFrame  # item_id string, cluster_id int
    user_clusters: DataFrame  # user_id string, cluster_id int (the primary cluster)
    clusters: DataFrame  # CLUSTERS_SCHEMA: cluster_id, name, dominant genres, tag vocabulary, n_items
    n_interactions: int  # exact row count of source.interactions


@dataclass(frozen=True)
class _Catalogue:
    """Item-side arrays the user generator closes over (indices are item_id - 1)."""

    item_cluster: np.ndarray  # int, cluster of each item
    quality: np.ndarray  # float, item effect on ratings
    sizes: np.ndarray  # int, items per cluster
    mass: np.ndarray  # float, popularity mass per cluster (sums to 1)
    by_cluster: np.ndarray  # item indices grouped by cluster, each group in popularity rank order
    starts: np.ndarray  # start of each cluster's group in by_cluster
    cluster_cdf: np.ndarray  # per-cluster popularity CDF over by_cluster, offset by the cluster id
    global_cdf: np.ndarray  # global popularity CDF over by_cluster
    weight: np.ndarray  # global popularity of each item (sums to 1)


# ------------------------------------------------------------------------------------------- items
def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _catalogue(cfg: SyntheticConfig) -> tuple[_Catalogue, pd.DataFrame, pd.DataFrame]:
    """The item arrays, the raw items frame and the clusters frame (pandas, built on the driver)."""
    n, k = cfg.n_items, cfg.n_clusters
    rng = _rng(cfg.seed, _ITEMS)
    item_cluster = rng.permutation(np.arange(n) % k)
    by_cluster = np.lexsort((rng.random(n), item_cluster))  # grouped by cluster, random rank order
    sizes = np.bincount(item_cluster, minlength=k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[by_cluster] = np.arange(n) - np.repeat(starts, sizes)
    zipf = (rank + 1.0) ** -cfg.popularity_exponent
    norm = np.bincount(item_cluster, weights=zipf, minlength=k)
    within = zipf / norm[item_cluster]
    mass = sizes / n
    weight = within * mass[item_cluster]

    cluster_cdf = np.cumsum(within[by_cluster])
    cluster_cdf -= np.repeat(np.concatenate([[0.0], cluster_cdf[starts[1:] - 1]]), sizes)
    cluster_cdf[starts + sizes - 1] = 1.0
    cluster_cdf += np.repeat(np.arange(k, dtype=float), sizes)
    global_cdf = np.cumsum(weight[by_cluster])
    global_cdf[-1] = 1.0

    # Dominant genres: a distinct lead genre per cluster (while the vocabulary lasts) plus 1-2 others.
    lead = rng.permutation(len(GENRES))
    dominant: list[list[int]] = []
    for c in range(k):
        first = int(lead[c % len(GENRES)])
        others = rng.choice(
            [g for g in range(len(GENRES)) if g != first], size=int(rng.integers(1, 3)), replace=False
        )
        dominant.append([first, *map(int, others)])
    n_vocab = max(8, 3 * cfg.tags_per_item)
    vocab = [[f"c{c}-tag{j}" for j in range(n_vocab)] for c in range(k)]

    keep = rng.random((n, 3)) < KEEP_DOMINANT_GENRE
    extra = np.where(rng.random(n) < EXTRA_GENRE, rng.integers(0, len(GENRES), n), -1)
    genres = []
    for i in range(n):
        dom = dominant[item_cluster[i]]
        chosen = {dom[0], *(g for j, g in enumerate(dom[1:], 1) if keep[i, j])}
        if extra[i] >= 0:
            chosen.add(int(extra[i]))
        genres.append(sorted(GENRES[g] for g in chosen))

    # Tags: Gumbel top-t over [own cluster vocabulary (Zipf), shared tags], i.e. weighted draws w/o
    # replacement.
    tag_w = np.concatenate(
        [CLUSTER_TAG_SHARE * (zw := 1.0 / np.arange(1, n_vocab + 1)) / zw.sum(),
         np.full(len(SHARED_TAGS), (1 - CLUSTER_TAG_SHARE) / len(SHARED_TAGS))]
    )  # fmt: skip
    keys = np.log(tag_w) + rng.gumbel(size=(n, len(tag_w)))
    top = np.argsort(-keys, axis=1, kind="stable")[:, : cfg.tags_per_item]
    tags = [
        [vocab[item_cluster[i]][t] if t < n_vocab else SHARED_TAGS[t - n_vocab] for t in top[i]]
        for i in range(n)
    ]
    years = rng.integers(FIRST_YEAR, cfg.start_date.year + 1, n)
    quality = rng.normal(0.0, ITEM_QUALITY_SD, n)

    ids = [str(i + 1) for i in range(n)]
    items = pd.DataFrame(
        {
            COL_ITEM: ids,
            COL_TITLE: [f"Synthetic Movie {i} ({y})" for i, y in zip(ids, years, strict=True)],
            COL_YEAR: years.astype("int32"),
            COL_GENRES: genres,
            COL_TAGS: tags,
            COL_CORRUPT: pd.Series([None] * n, dtype=object),
            COL_CLUSTER: item_cluster.astype("int32"),
        }
    )
    names = [[GENRES[g] for g in dom] for dom in dominant]
    clusters = pd.DataFrame(
        {
            COL_CLUSTER: np.arange(k, dtype="int32"),
            "name": [f"c{c}-" + "-".join(g.lower() for g in names[c]) for c in range(k)],
            COL_GENRES: names,
            "tag_vocabulary": vocab,
            "n_items": sizes.astype("int32"),
        }
    )
    cat = _Catalogue(item_cluster, quality, sizes, mass, by_cluster, starts, cluster_cdf, global_cdf, weight)
    return cat, items, clusters


# ------------------------------------------------------------------------------------------- users
def _profiles(cfg: SyntheticConfig, block: int, users: np.ndarray) -> dict[str, np.ndarray]:
    """Primary/secondary cluster, interaction count and rating bias of one block's users."""
    rng = _rng(cfg.seed, _PROFILES, block)
    m, k = len(users), cfg.n_clusters
    primary = rng.integers(0, k, m)
    secondary = (primary + rng.integers(1, k, m)) % k if k > 1 else primary.copy()
    extra = max(cfg.mean_interactions_per_user - MIN_INTERACTIONS, 0.0)
    if extra > 0:
        mu = np.log(extra) - LOGNORMAL_SIGMA**2 / 2
        tail = np.rint(rng.lognormal(mu, LOGNORMAL_SIGMA, m)).astype(np.int64)
    else:
        tail = np.zeros(m, dtype=np.int64)
    n = np.minimum(MIN_INTERACTIONS + tail, cfg.n_items)
    bias = rng.normal(0.0, USER_BIAS_SD, m)
    return {"user": users, "primary": primary, "secondary": secondary, "n": n, "bias": bias}


def _block_users(cfg: SyntheticConfig, block: int, per_block: int) -> np.ndarray:
    return np.arange(block * per_block + 1, min((block + 1) * per_block, cfg.n_users) + 1, dtype=np.int64)


def _allocate(
    rng: np.random.Generator, n: np.ndarray, share: float, caps: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each user's ``n`` over (primary, secondary, other); overflow goes secondary, other, primary."""
    a = rng.binomial(n, share)
    b = rng.binomial(n - a, SECONDARY_SHARE)
    want = [np.minimum(a, caps[0]), np.minimum(b, caps[1]), np.minimum(n - a - b, caps[2])]
    left = n - want[0] - want[1] - want[2]
    for j in (1, 2, 0):
        add = np.minimum(left, caps[j] - want[j])
        want[j] = want[j] + add
        left = left - add
    return want[0], want[1], want[2]


def _draw_distinct(
    rng: np.random.Generator,
    need: np.ndarray,
    accept: np.ndarray,
    sample: Callable[[np.ndarray], np.ndarray],
    allowed: Callable[[int], np.ndarray],
    weight: np.ndarray,
) -> np.ndarray:
    """Draw ``need[u]`` distinct items per user by popularity, without replacement.

    Draws with replacement (``sample`` maps user positions to items, -1 for a rejected draw) and drops
    repeats, which is exactly successive sampling; users still short after a few rounds finish with
    ``rng.choice(replace=False)`` over their remaining pool (``allowed(u)``: item mask; ``weight``:
    item popularity). Returns keys ``user_pos * n_items + item``, grouped by user, in draw order.
    """
    n_items = weight.size
    chosen = np.empty(0, dtype=np.int64)
    left = need.astype(np.int64).copy()
    factor = 1.5
    for _ in range(4):
        active = np.flatnonzero(left > 0)
        if active.size == 0:
            break
        reps = np.ceil(left[active] * factor / accept[active]).astype(np.int64) + 4
        pos = np.repeat(active, reps)
        items = sample(pos)
        key = pos * n_items + items
        key = key[(items >= 0) & ~np.isin(key, chosen)]
        _, first = np.unique(key, return_index=True)
        key = key[np.sort(first)]
        user = key // n_items
        rank = np.arange(key.size) - np.searchsorted(user, user, side="left")
        key = key[rank < left[user]]
        left -= np.bincount(key // n_items, minlength=left.size)
        chosen = np.concatenate([chosen, key])
        factor *= 2
    for u in np.flatnonzero(left > 0):
        mask = allowed(int(u))
        mask[chosen[chosen // n_items == u] % n_items] = False
        pool = np.flatnonzero(mask)
        picks = rng.choice(pool, size=int(left[u]), replace=False, p=weight[pool] / weight[pool].sum())
        chosen = np.concatenate([chosen, u * n_items + picks])
    return chosen


def _block_events(cfg: SyntheticConfig, cat: _Catalogue, block: int, per_block: int) -> pd.DataFrame:
    """All interactions of one block of users (a pure function of ``(cfg, block)``)."""
    prof = _profiles(cfg, block, _block_users(cfg, block, per_block))
    rng = _rng(cfg.seed, _EVENTS, block)
    n_items = cfg.n_items
    p, s, n = prof["primary"], prof["secondary"], prof["n"]
    cap_p = cat.sizes[p]
    cap_s = np.where(s != p, cat.sizes[s], 0)
    n_p, n_s, n_o = _allocate(rng, n, cfg.in_cluster_share, (cap_p, cap_s, n_items - cap_p - cap_s))

    def in_cluster(cluster: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def sample(pos: np.ndarray) -> np.ndarray:
            c = cluster[pos]
            idx = np.searchsorted(cat.cluster_cdf, c + rng.random(pos.size), side="right")
            idx = np.clip(idx, cat.starts[c], cat.starts[c] + cat.sizes[c] - 1)
            return cat.by_cluster[idx]

        return sample

    def elsewhere(pos: np.ndarray) -> np.ndarray:
        idx = np.minimum(np.searchsorted(cat.global_cdf, rng.random(pos.size), side="right"), n_items - 1)
        item = cat.by_cluster[idx]
        c = cat.item_cluster[item]
        return np.where((c == p[pos]) | (c == s[pos]), -1, item)

    ones = np.ones(len(n))
    accept_o = np.maximum(1.0 - cat.mass[p] - np.where(s != p, cat.mass[s], 0.0), 1e-9)
    sources = (
        (n_p, ones, in_cluster(p), lambda u: cat.item_cluster == p[u]),
        (n_s, ones, in_cluster(s), lambda u: cat.item_cluster == s[u]),
        (n_o, accept_o, elsewhere, lambda u: (cat.item_cluster != p[u]) & (cat.item_cluster != s[u])),
    )
    keys, source = [], []
    for j, (need, accept, sample, allowed) in enumerate(sources):
        got = _draw_distinct(rng, need, accept, sample, allowed, cat.weight)
        keys.append(got)
        source.append(np.full(got.size, j))
    key, src = np.concatenate(keys), np.concatenate(source)
    order = np.argsort(key // n_items, kind="stable")
    key, src = key[order], src[order]
    upos, item = key // n_items, key % n_items

    latent = (
        BASE_RATING
        + np.asarray(AFFINITY)[src]
        + prof["bias"][upos]
        + cat.quality[item]
        + rng.normal(0.0, RATING_NOISE_SD, key.size)
    )
    rating = np.clip(np.rint(latent * 2) / 2, 0.5, 5.0)
    start = calendar.timegm(cfg.start_date.timetuple())
    ts = rng.integers(start, start + cfg.days * 86_400, key.size)
    if cfg.play_counts:  # after every other draw: the option changes nothing else
        activity = rng.lognormal(0.0, PLAY_ACTIVITY_SD, len(prof["user"]))
        mean = PLAY_BASE * activity[upos] * cfg.play_count_ratio ** (latent - BASE_RATING)
        rating = 1.0 + rng.poisson(mean).astype(np.float64)
    return pd.DataFrame({"user": prof["user"][upos], "item": item + 1, "rating": rating, "ts": ts})


def _blocks_of(batches: Iterator[pd.DataFrame], per_block: int) -> tuple[np.ndarray, np.ndarray]:
    ids = [b["id"].to_numpy() for b in batches]
    users = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
    return users, np.unique((users - 1) // per_block)


def _user_range(spark: SparkSession, cfg: SyntheticConfig) -> DataFrame:
    return spark.range(1, cfg.n_users + 1, numPartitions=cfg.partitions)


# -------------------------------------------------------------------------------------------- API
def generate(
    spark: SparkSession, cfg: SyntheticConfig, *, users_per_block: int = USERS_PER_BLOCK
) -> SyntheticData:
    """Build the synthetic source (lazy interactions, driver-built items) and its ground truth.

    ``users_per_block`` is part of the seed: the same ``(cfg.seed, users_per_block)`` gives the same
    frames for any ``cfg.partitions``. Runs one cheap Spark job (the per-user counts) to log the size.
    """
    if cfg.n_clusters > cfg.n_items:
        raise ValueError(f"synthetic.n_clusters ({cfg.n_clusters}) exceeds synthetic.n_items ({cfg.n_items})")
    if users_per_block < 1:
        raise ValueError(f"users_per_block must be >= 1, got {users_per_block}")
    cat, items_pd, clusters_pd = _catalogue(cfg)
    per_block = users_per_block

    def profiles(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        users, blocks = _blocks_of(batches, per_block)
        for block in blocks:
            prof = _profiles(cfg, int(block), _block_users(cfg, int(block), per_block))
            frame = pd.DataFrame({k: prof[k] for k in ("user", "primary", "secondary", "n")}).astype(
                {"primary": "int32", "secondary": "int32"}
            )
            yield frame[np.isin(frame["user"].to_numpy(), users)]

    def events(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        users, blocks = _blocks_of(batches, per_block)
        for block in blocks:
            frame = _block_events(cfg, cat, int(block), per_block)
            yield frame[np.isin(frame["user"].to_numpy(), users)]

    users = _user_range(spark, cfg)
    prof = users.mapInPandas(profiles, _PROFILE_DDL)
    user_clusters = prof.select(
        F.col("user").cast("string").alias(COL_USER), F.col("primary").alias(COL_CLUSTER)
    ).to(USER_CLUSTERS_SCHEMA)
    n_rows = int(prof.agg(F.sum("n")).head(1)[0][0] or 0)

    interactions = (
        users.mapInPandas(events, _EVENTS_DDL)
        .select(
            F.col("user").cast("string").alias(COL_USER),
            F.col("item").cast("string").alias(COL_ITEM),
            F.col("rating").cast("string").alias(COL_RATING),
            F.col("ts").cast("string").alias(COL_TIMESTAMP),
            F.lit(None).cast("string").alias(COL_CORRUPT),
        )
        .to(RAW_INTERACTIONS_SCHEMA)
    )
    items_df = spark.createDataFrame(items_pd, schema=_ITEMS_WITH_CLUSTER)
    items = items_df.select(*RAW_ITEMS_SCHEMA.fieldNames()).to(RAW_ITEMS_SCHEMA)
    item_clusters = items_df.select(COL_ITEM, COL_CLUSTER).to(ITEM_CLUSTERS_SCHEMA)
    clusters = spark.createDataFrame(clusters_pd, schema=CLUSTERS_SCHEMA)
    log.info(
        "synthetic source: %d interactions, %d users, %d items, %d clusters (seed %d, %d partitions)",
        n_rows, cfg.n_users, cfg.n_items, cfg.n_clusters, cfg.seed, cfg.partitions,
    )  # fmt: skip
    source = RawSource(
        name=SOURCE_NAME, interactions=interactions, items=items, timestamp_format=EPOCH_SECONDS
    )
    return SyntheticData(source, item_clusters, user_clusters, clusters, n_rows)


def write_csv(data: SyntheticData, folder: str, *, single_file: bool = False) -> None:
    """Write the source as a MovieLens-latest-style folder: ``ratings.csv`` and ``movies.csv``.

    Spark writes each as a folder of part files named like the file (which ``spark.read.csv`` reads
    as one); ``single_file=True`` coalesces to one partition and leaves a plain file instead (local
    paths only; meant for small data).
    """
    ratings = data.source.interactions.select(
        F.col(COL_USER).alias("userId"),
        F.col(COL_ITEM).alias("movieId"),
        F.col(COL_RATING).alias("rating"),
        F.col(COL_TIMESTAMP).alias("timestamp"),
    )
    if single_file and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", folder) and not folder.startswith("file:"):
        raise ValueError(f"write_csv(single_file=True) needs a local folder, got {folder!r}")
    folder = folder.removeprefix("file://").removeprefix("file:")
    frames = {"ratings.csv": ratings}
    if data.source.items is not None:
        frames["movies.csv"] = data.source.items.select(
            F.col(COL_ITEM).alias("movieId"),
            F.col(COL_TITLE).alias("title"),
            F.when(F.size(COL_GENRES) > 0, F.array_join(COL_GENRES, "|"))
            .otherwise(F.lit("(no genres listed)"))
            .alias("genres"),
        )
    for name, df in frames.items():
        target = f"{folder.rstrip('/')}/{name}"
        if not single_file:
            df.write.mode("overwrite").option("header", True).csv(target)
            continue
        tmp = Path(f"{target}._parts")
        df.coalesce(1).write.mode("overwrite").option("header", True).csv(str(tmp))
        (part,) = tmp.glob("part-*.csv")
        dest = Path(target)
        if dest.is_dir():
            shutil.rmtree(dest)
        part.replace(dest)
        shutil.rmtree(tmp)
    log.info("wrote synthetic MovieLens-style CSVs to %s (%d ratings)", folder, data.n_interactions)
