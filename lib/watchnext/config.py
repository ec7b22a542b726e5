"""Layered, typed configuration.

Layers, later wins: ``conf/base.yaml`` -> ``conf/<env>.yaml`` (``local`` by default, or
``$WATCHNEXT_ENV``) -> extra YAML files given with ``--config`` -> ``--conf key.path=value``
overrides. Values may reference environment variables as ``${env:NAME}`` or ``${env:NAME:-default}``;
that is the only way secrets enter the config (a literal value under a secret-looking key in a file is
refused). The merged mapping is validated once into the typed :class:`Config`; an unknown key or a
wrong type raises :class:`ConfigError` naming the dotted key.

One module on purpose (about 700 lines): the schema is the single source of every default
(``conf/base.yaml`` is checked against it in tests/unit/test_config.py) and its sections refer to
each other's types; split by section it would only scatter the defaults again.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from watchnext import locations
from watchnext.experiments.spec import ExperimentConfig, validate_experiments

ENV_VAR = "WATCHNEXT_ENV"
CONF_DIR_VAR = "WATCHNEXT_CONF_DIR"
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|access_key)", re.IGNORECASE)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Storage locations are made absolute where the config is validated (watchnext.locations), relative to
# the working directory of the process that loads it; defaults are validated too, so a default
# "./lakehouse" is resolved like a configured one.
StorageUri = Annotated[str, AfterValidator(locations.resolve_uri)]  # Spark / Delta / MLflow opens it
LocalPath = Annotated[str, AfterValidator(locations.resolve_path)]  # only this machine's Python does
TrackingUri = Annotated[str, AfterValidator(locations.resolve_sqlite_uri)]


# --------------------------------------------------------------------------------------------- spark
class SparkConfig(_Strict):
    app_name: str = "watchnext"
    # None leaves the master to spark-submit (cluster runs); local runs set local[*].
    master: str | None = "local[*]"
    shuffle_partitions: int = Field(8, ge=1)
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"
    # "maven": Ivy resolves io.delta jars from Maven Central (configure_spark_with_delta_pip);
    # "provided": the cluster already ships Delta on its classpath; nothing is resolved.
    delta_jars: Literal["maven", "provided"] = "maven"
    extra_packages: list[str] = Field(default_factory=list)
    driver_memory: str | None = None
    local_dir: LocalPath | None = None  # spark.local.dir (scratch space): a local folder
    ui_enabled: bool = False
    # Native BLAS/LAPACK for Spark's linear algebra (ALS's normal equations and Cholesky solves):
    # "auto" loads the MKL runtime the `mkl` package installs in this Python environment when there is
    # one, "off" keeps netlib's Java BLAS, or the path of a libblas-compatible library (session.py).
    native_blas: str = "auto"
    # Local masters: Python workers fork from watchnext.worker_daemon, which imported and froze the
    # kernels (no ~50 ms gc.collect() after every task). Not on clusters, where the executors import
    # watchnext only from --py-files at task time, after the daemon has started.
    worker_daemon: bool = True
    conf: dict[str, str] = Field(default_factory=dict)  # any extra spark.* settings


# ------------------------------------------------------------------------------------------- storage
class StorageConfig(_Strict):
    # Root under which every Delta table lives as <lakehouse>/<table>; a path or a URI (s3a://, abfss://).
    lakehouse: StorageUri = Field("./lakehouse", validate_default=True)
    checkpoint_dir: StorageUri = Field("./lakehouse/_checkpoints", validate_default=True)
    cache_dir: LocalPath = Field("./data/cache", validate_default=True)  # downloaded datasets


# -------------------------------------------------------------------------------------------- mlflow
class MlflowConfig(_Strict):
    enabled: bool = True
    tracking_uri: TrackingUri = Field("sqlite:///mlruns/mlflow.db", validate_default=True)
    artifact_location: StorageUri | None = Field("./mlruns/artifacts", validate_default=True)
    registry_uri: str | None = None
    experiment: str = "watchnext"


# -------------------------------------------------------------------------------------------- ingest
class ValidationConfig(_Strict):
    rating_min: float = 0.5
    rating_max: float = 5.0
    # MovieLens-style integer ids; set false for opaque string ids.
    numeric_ids: bool = True
    # Duplicates of (user, item): keep the latest event (ties: the higher rating); the others go to
    # rejects with reason "duplicate".
    duplicate_rule: Literal["latest"] = "latest"
    # Interactions with an item missing from the item metadata are rejected (when metadata exists).
    require_known_items: bool = True
    # Events later than run_date + this many days are rejected as "timestamp in the future".
    max_future_days: int = Field(1, ge=0)
    min_timestamp: dt.date = dt.date(1970, 1, 2)


class MovieLensConfig(_Strict):
    # A local folder of any supported layout (ml-100k, ml-1m, ml-latest(-small), ml-25m) ...
    path: LocalPath | None = None
    # ... or a dataset name to download from GroupLens (checksum-verified, cached under cache_dir).
    name: str | None = None
    base_url: str = "https://files.grouplens.org/datasets/movielens"
    expected_md5: str | None = None  # default: the .md5 file GroupLens publishes beside each zip


class GenericColumns(_Strict):
    user: str = "user_id"
    item: str = "item_id"
    rating: str | None = "rating"  # None: implicit events, every row weight 1.0 (summed per pair)
    timestamp: str | None = "timestamp"


class GenericItemColumns(_Strict):
    item: str = "item_id"
    title: str | None = "title"
    genres: str | None = "genres"
    tags: str | None = None


class GenericConfig(_Strict):
    path: StorageUri | None = None
    format: Literal["csv", "parquet"] = "csv"
    sep: str = ","
    header: bool = True
    encoding: str = "UTF-8"
    columns: GenericColumns = Field(default_factory=GenericColumns)
    # "epoch_seconds", "epoch_millis" or a Spark datetime pattern such as "yyyy-MM-dd HH:mm:ss"
    timestamp_format: str = "epoch_seconds"
    items_path: StorageUri | None = None
    items_format: Literal["csv", "parquet"] = "csv"
    item_columns: GenericItemColumns = Field(default_factory=GenericItemColumns)
    genre_sep: str = "|"


class SyntheticConfig(_Strict):
    n_users: int = Field(2000, ge=1)
    n_items: int = Field(1000, ge=2)
    n_clusters: int = Field(8, ge=1)
    mean_interactions_per_user: float = Field(40.0, gt=0)
    # Share of a user's interactions drawn from their own cluster (the planted structure).
    in_cluster_share: float = Field(0.8, ge=0, le=1)
    popularity_exponent: float = Field(1.0, ge=0)  # Zipf exponent within a cluster
    tags_per_item: int = Field(3, ge=0)
    start_date: dt.date = dt.date(2023, 1, 1)
    days: int = Field(365, ge=1)
    partitions: int = Field(4, ge=1)
    seed: int = 42
    # Play counts instead of ratings (implicit feedback: set ingest.feedback=implicit, as explicit
    # validation rejects values above rating_max). A pair's count is 1 + Poisson with a mean that grows
    # play_count_ratio times per point of the pair's latent rating, times a per-user activity level:
    # the user's own cluster gets larger counts than incidental items (ingest/synthetic.py).
    play_counts: bool = False
    play_count_ratio: float = Field(4.0, gt=1)


class IngestConfig(_Strict):
    source: Literal["synthetic", "movielens", "generic"] = "synthetic"
    feedback: Literal["explicit", "implicit"] = "explicit"
    movielens: MovieLensConfig = Field(default_factory=MovieLensConfig)
    generic: GenericConfig = Field(default_factory=GenericConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="after")
    def _source_is_configured(self) -> IngestConfig:
        if self.source == "movielens" and not (self.movielens.path or self.movielens.name):
            raise ValueError(
                "ingest.source is 'movielens' but neither movielens.path nor movielens.name is set"
            )
        if self.source == "generic" and not self.generic.path:
            raise ValueError("ingest.source is 'generic' but generic.path is not set")
        return self


# ----------------------------------------------------------------------------------------------- als
class IntRange(_Strict):
    """An integer search dimension: ``[low, high]`` (log-uniform when ``log``); ``values`` for grid."""

    low: int = Field(ge=1)
    high: int = Field(ge=1)
    log: bool = False
    values: list[int] | None = None  # grid points; default: low, (geometric) mid, high

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        return self


class FloatRange(_Strict):
    """A real search dimension: ``[low, high]`` (log-uniform when ``log``); ``values`` for grid."""

    low: float = Field(ge=0)
    high: float = Field(ge=0)
    log: bool = False
    values: list[float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


ConfidenceScheme = Literal["binary", "rating", "log", "centered"]  # models/als.py Confidence


def _counts_schemes() -> list[ConfidenceScheme]:
    return ["binary", "log", "rating"]


class AlsSearchSpace(_Strict):
    # Defaults: the region where implicit ALS does best on ml-latest-small (benchmarks/quality_als.py):
    # a ridge with reg_param / alpha ~ 0.1; ranks above ~64 and more than 10-15 iterations add little.
    rank: IntRange = Field(default_factory=lambda: IntRange(low=32, high=128, log=True))
    reg_param: FloatRange = Field(default_factory=lambda: FloatRange(low=0.03, high=3.0, log=True))
    alpha: FloatRange = Field(default_factory=lambda: FloatRange(low=1.0, high=30.0, log=True))
    max_iter: IntRange = Field(default_factory=lambda: IntRange(low=10, high=15))
    # Confidence schemes, a categorical dimension searched only when als.confidence is auto and the
    # values are implicit counts (models/als.py resolve_confidence); never for ratings or plain events.
    confidence: list[ConfidenceScheme] = Field(default_factory=_counts_schemes, min_length=1)

    @field_validator("confidence")
    @classmethod
    def _distinct_schemes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"confidence schemes must be distinct, got {v}")
        return v


class AlsTuningConfig(_Strict):
    enabled: bool = True
    method: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int = Field(8, ge=1)
    # Share of each user's training items held out (stratified_split) to score the trials on.
    validation_ratio: float = Field(0.25, gt=0, lt=1)
    metric: str = "ndcg_at_10"  # a ranking_metrics name; K is taken from its suffix
    seed: int = 43  # of the sampler and the validation split (differs from the test split's 42)
    space: AlsSearchSpace = Field(default_factory=AlsSearchSpace)
    # Trials fitted side by side (watchnext.concurrency): the sampler proposes this many at a time from
    # the trials finished so far. A different number gives a different (equally seeded) search.
    concurrent_trials: int = Field(2, ge=1)
    # validation users x items up to this: each trial's lists are scored on the driver (numpy), not
    # by Spark jobs; the same metric values (models/tuning.py LocalValidation). 0: always Spark.
    local_max_cells: int = Field(20_000_000, ge=0)

    @field_validator("metric")
    @classmethod
    def _ranking_metric(cls, v: str) -> str:
        if not re.fullmatch(r"(precision|recall|ndcg|map|mrr|hit_rate)_at_[1-9][0-9]*", v):
            raise ValueError(f"metric must be a ranking metric such as 'ndcg_at_10', got {v!r}")
        return v


class AlsConfig(_Strict):
    implicit_prefs: bool = True
    # implicit: how a rating becomes Spark's implicit value x (confidence 1 + alpha*|x|):
    # binary (x = 1), rating (x = r), log (x = log1p r), centered (x = r - rating_threshold), or auto:
    # resolved per run from the data (models/als.py resolve_confidence): explicit ratings and implicit
    # events without counts -> binary; implicit counts -> searched over tuning.space.confidence on the
    # validation split (first trials: each scheme at the configured parameters, log first), or log
    # when tuning is off. A named scheme is never searched.
    confidence: Literal["auto", "binary", "rating", "log", "centered"] = "auto"
    rating_threshold: float = 3.0
    rank: int = Field(64, ge=1)
    reg_param: float = Field(0.3, ge=0)
    alpha: float = Field(3.0, ge=0)
    max_iter: int = Field(10, ge=1)
    nonnegative: bool = False
    checkpoint_interval: int = Field(10, ge=-1)
    num_blocks: int | None = Field(None, ge=1)  # None: sized from the rating count and parallelism
    seed: int = 42
    k: int = Field(10, ge=1)  # length of the recommendation lists
    # Biased explicit model: regularisation of the user and item biases, and alternating sweeps.
    bias_reg_user: float = Field(5.0, ge=0)
    bias_reg_item: float = Field(5.0, ge=0)
    bias_iters: int = Field(5, ge=1)
    tuning: AlsTuningConfig = Field(default_factory=AlsTuningConfig)
    # MLflow Model Registry: the serving model is registered under this name, and the alias is moved
    # to each new version (the evaluate stage promotes it to "champion" when it beats the baselines).
    registered_model: str = "watchnext-als"
    model_alias: str = "candidate"


# ------------------------------------------------------------------------------------------ content
class ContentConfig(_Strict):
    """Item content features (features/content.py): one L2-normalised block per signal, weighted."""

    genre_weight: float = Field(1.0, ge=0)  # multi-hot genres
    tag_weight: float = Field(1.0, ge=0)  # TF-IDF over the item's tags
    title_weight: float = Field(0.5, ge=0)  # TF-IDF over title words (year suffix removed)
    year_weight: float = Field(0.5, ge=0)  # one-hot release-year bucket
    year_bucket_years: int = Field(10, ge=1)  # bucket width: decades by default
    tag_vocab_size: int = Field(5000, ge=1)
    title_vocab_size: int = Field(5000, ge=1)
    min_df: int = Field(2, ge=1)  # a tag or title word must occur in this many items
    # Thin content: fewer items than this share with a genre or tag (data_profile.py) and content
    # neighbours are left out, and clusters.features auto clusters on behaviour.
    min_coverage: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _some_weight(self) -> ContentConfig:
        if not any((self.genre_weight, self.tag_weight, self.title_weight, self.year_weight)):
            raise ValueError("content: every block weight is 0, no features are left")
        return self


class ClustersConfig(_Strict):
    """Genre clusters over content features (models/clusters.py)."""

    algorithm: Literal["kmeans", "bisecting"] = "kmeans"
    k: int | None = Field(None, ge=2)  # None: the best silhouette over k_min..k_max step k_step
    k_min: int = Field(8, ge=2)
    k_max: int = Field(40, ge=2)
    k_step: int = Field(4, ge=1)
    max_iter: int = Field(40, ge=1)
    n_init: int = Field(5, ge=1)  # k-means starts per k (seeds seed..seed+n_init-1); the lowest cost wins
    seed: int = 42
    # user_cluster_affinity share = (n_uc + m * p_c) / (n_u + m), p_c the cluster's global share.
    affinity_smoothing: float = Field(5.0, ge=0)
    label_genres: int = Field(2, ge=1)  # genres named in a cluster's label
    label_tags: int = Field(1, ge=0)  # tags named in a cluster's label
    # k values of the search fitted side by side (watchnext.concurrency); 1: one after another.
    concurrent_fits: int = Field(4, ge=1)
    # The k search (k-means, k None) runs on the driver (models/kmeans_search.py) up to this many items
    # with content, then only the chosen k is fitted on Spark; beyond it every k is fitted on Spark.
    search_max_items: int = Field(50_000, ge=0)
    registered_model: str = "watchnext-clusters"
    # What the items are clustered on (models/cluster_features.py): content features, the ALS item
    # factors (behaviour), both (hybrid), or auto: behaviour when fewer than content.min_coverage of
    # the items carry a genre or tag, else content.
    features: Literal["auto", "content", "behaviour", "hybrid"] = "auto"
    behaviour_weight: float = Field(1.0, gt=0)  # hybrid: weight of the factor block against content
    label_members: int = Field(3, ge=1)  # most-watched members naming a behavioural cluster ("Fans of ...")

    @model_validator(mode="after")
    def _range(self) -> ClustersConfig:
        if self.k is None and self.k_min > self.k_max:
            raise ValueError(f"clusters.k_min ({self.k_min}) > clusters.k_max ({self.k_max})")
        return self


SimilaritySource = Literal["als", "content", "cooccurrence"]


class SimilarityConfig(_Strict):
    """Item-item and user-user neighbours (models/neighbors.py, on the engine in models/similarity.py)."""

    k: int = Field(20, ge=1)  # neighbours kept per item and source
    sources: list[SimilaritySource] = Field(default_factory=lambda: list(get_args(SimilaritySource)))
    block_size: int = Field(2048, ge=1)  # rows per block of the blocked exact top-K
    # Items with fewer interactions get no als/cooccurrence neighbours (too little evidence); the
    # content source covers every item, cold ones included.
    min_item_interactions: int = Field(3, ge=1)
    cooccurrence_measure: Literal["jaccard", "cosine"] = "jaccard"
    min_cooccurrence: int = Field(2, ge=1)  # users two items must share to be neighbours
    user_k: int = Field(50, ge=1)  # neighbours per user (user-based CF)
    # User-based CF neighbours from shared items (scored offline too) or from ALS user factors
    # (serving only: the factors are fitted on every interaction, so they cannot be scored offline).
    user_source: Literal["cooccurrence", "als"] = "cooccurrence"


# ----------------------------------------------------------------------------------------- recommend
RecommendSource = Literal["als", "ease", "ncf", "item", "user", "cluster", "popular", "trending"]


def _default_recommend_sources() -> list[RecommendSource]:
    return ["als", "ease", "item", "user", "cluster", "popular", "trending"]


class EaseConfig(_Strict):
    """The closed-form linear item model behind the ``ease`` source (models/ease.py)."""

    reg: float = Field(500.0, gt=0)  # lambda: the L2 penalty on the item x item weights
    max_items: int = Field(10_000, ge=1)  # size limit of the dense solve: the most-interacted items
    min_item_interactions: int = Field(2, ge=1)  # rarer items get no EASE score
    session_weight: float = Field(2.0, ge=0)  # weight of the session Gram (0: plain EASE)
    session_seconds: float = Field(300.0, gt=0)  # its time constant: items this close count most


class BlendTuningConfig(_Strict):
    """Blend weights tuned on a validation split carved from the protocol's train split."""

    enabled: bool = True
    method: Literal["tpe", "random"] = "tpe"  # Optuna sampler
    n_trials: int = Field(60, ge=1)
    validation_ratio: float = Field(0.25, gt=0, lt=1)  # share of each user's train items held out
    seed: int = 44
    # Users whose validation pools are pulled to the driver to tune on (a uniform hash sample).
    max_users: int = Field(20000, ge=1)
    # Share of those users held back: the weights and the ranker are fitted on the rest, and the recipe
    # (learned, linear, or the best single source) is chosen by NDCG@K on these.
    holdout_share: float = Field(0.25, gt=0, lt=1)


class LearnedRankerConfig(_Strict):
    """The learned ranker (models/ranker.py): XGBoost LambdaMART on Spark over the candidate pool."""

    max_depth: int = Field(4, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    n_estimators: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    early_stopping_share: float = Field(0.2, gt=0, lt=1)  # of the tuning users: the stopping slice
    min_child_weight: float = Field(10.0, ge=0)
    subsample: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    num_workers: int = Field(1, ge=1)  # XGBoost barrier tasks (executor slots) training side by side
    # Validation pools up to this many rows (already on the driver for the weight search), one worker:
    # the ranker trains on the driver, the same trees as the Spark task (models/ranker.py). 0: on Spark.
    local_max_rows: int = Field(5_000_000, ge=0)
    registered_model: str = "watchnext-ranker"


class RecommendConfig(_Strict):
    """Candidates, blend, cold start, diversity and the published tables (watchnext.recommend, wired by
    stages/recommend.py)."""

    n: int = Field(10, ge=1)  # items per user in `recommendations`
    candidates: int = Field(100, ge=1)  # M: candidates per user and source
    sources: list[RecommendSource] = Field(default_factory=_default_recommend_sources)
    # Neighbours behind the item-item candidates and `because_you_watched` (item_similarities source).
    item_source: Literal["cooccurrence", "als", "content"] = "cooccurrence"
    recent_items: int | None = Field(None, ge=1)  # item-item anchors: the user's latest N (None: all)
    normalization: Literal["rank", "minmax"] = "minmax"
    # The blend used when tuning is off, and the tuner's first trial.
    # Keys: recommend sources (RecommendSource), checked below; str keys so any Mapping[str, float] API
    # takes them as they are.
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "als": 1.0,
            "ease": 1.0,
            "item": 0.3,
            "user": 0.5,
            "cluster": 0.1,
            "popular": 0.05,
        }
    )
    # Switching rule: users with fewer interactions than this get the cold weights instead.
    cold_threshold: int = Field(5, ge=0)
    cold_weights: dict[str, float] = Field(
        default_factory=lambda: {"cluster": 1.0, "trending": 0.3, "popular": 0.1}
    )
    max_per_cluster: int | None = Field(4, ge=1)  # diversity cap per genre cluster in a top-N
    cluster_top: int = Field(3, ge=1)  # favourite clusters feeding the cluster source
    genre_rows: int = Field(5, ge=0)  # rows per user in `genre_rows`
    genre_row_length: int = Field(10, ge=1)
    because_k: int = Field(10, ge=1)  # neighbours per item in `because_you_watched`
    ease: EaseConfig = Field(default_factory=EaseConfig)
    # learned: the ranker orders the pool (kept when it beats the linear blend on the held-back users);
    # linear: the tuned weighted sum alone.
    ranker: Literal["learned", "linear"] = "learned"
    learned: LearnedRankerConfig = Field(default_factory=LearnedRankerConfig)
    tuning: BlendTuningConfig = Field(default_factory=BlendTuningConfig)

    @field_validator("weights", "cold_weights")
    @classmethod
    def _source_keys(cls, v: dict[str, float]) -> dict[str, float]:
        known = get_args(RecommendSource)
        unknown = sorted(set(v) - set(known))
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; known: {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _backfill(self) -> RecommendConfig:
        if "popular" not in self.sources and "trending" not in self.sources:
            raise ValueError("recommend.sources needs 'popular' or 'trending': they backfill every list")
        if self.candidates < self.n:
            raise ValueError(f"recommend.candidates ({self.candidates}) < recommend.n ({self.n})")
        return self


# ---------------------------------------------------------------------------------------- evaluation
class EvaluationConfig(_Strict):
    """The offline protocol every model is scored under (the project's quality bar)."""

    split: Literal["stratified", "random", "leave_last_n", "time"] = "stratified"
    ratio: float = Field(0.75, gt=0, lt=1)  # train share (stratified, random)
    seed: int = 42
    leave_last_n: int = Field(1, ge=1)
    time_cutoff: dt.date | None = None  # split == "time"
    k: int = Field(10, ge=1)
    # Extra cut-offs for the ranking curves in the evaluation table.
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    trending_window_days: float = Field(30.0, gt=0)
    # Models scored side by side (watchnext.concurrency); 1: one after another (large data, less memory).
    concurrent_models: int = Field(3, ge=1)
    # Lists up to this many rows in all (test users x max K x models) are collected and scored on the
    # driver (evaluation/local_metrics.py, the same values); beyond, every metric is a Spark job.
    local_max_rows: int = Field(5_000_000, ge=0)

    @model_validator(mode="after")
    def _time_needs_cutoff(self) -> EvaluationConfig:
        if self.split == "time" and self.time_cutoff is None:
            raise ValueError("evaluation.split is 'time' but evaluation.time_cutoff is not set")
        return self


# ---------------------------------------------------------------------------------------------- ncf
class NcfConfig(_Strict):
    """NeuMF (He et al., WWW 2017) trained with Horovod on Spark (models/ncf*.py, stages/ncf.py)."""

    enabled: bool = True  # false: the stage is skipped (the Airflow DAG branches around it)
    model: Literal["neumf", "gmf", "mlp"] = "neumf"
    mf_dim: int = Field(64, ge=1)  # GMF embedding size
    mlp_layers: list[int] = Field(default_factory=lambda: [128, 64])  # [0] = 2 x MLP embedding
    dropout: float = Field(0.0, ge=0, lt=1)
    l2: float = Field(1e-2, ge=0)  # L2 on the looked-up embeddings, averaged over the scored pairs
    # Positives: every interaction (implicit), or ratings >= positive_threshold when it is set.
    positive_threshold: float | None = None
    num_negatives: int = Field(100, ge=1)  # sampled negatives per positive (uniform, unseen items)
    # Negative sets sampled in Spark; epoch e trains on set e % negative_rounds (fresh negatives per
    # epoch, as in the paper, when negative_rounds >= epochs).
    negative_rounds: int = Field(8, ge=1)
    shards: int = Field(16, ge=1)  # Parquet shards of the training data; rank r reads s % size == r
    # softmax: cross-entropy of each positive against its negatives; bce: the paper's log loss.
    loss: Literal["softmax", "bce"] = "softmax"
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(512, ge=1)  # positives per Horovod rank and step
    learning_rate: float = Field(0.001, gt=0)
    scale_lr: bool = True  # learning rate x number of ranks (Horovod's rule)
    sparse_as_dense: bool = True  # allreduce embedding gradients densely (small tables) or allgather slices
    # Pre-train GMF and MLP, then initialise NeuMF from them (the paper's Section 3.4.1).
    pretrain: bool = False
    pretrain_epochs: int = Field(10, ge=1)
    pretrain_alpha: float = Field(0.5, ge=0, le=1)
    num_proc: int = Field(2, ge=1)  # Horovod ranks = Spark tasks
    threads_per_proc: int | None = Field(None, ge=1)  # CPU ranks: TF threads (None: cores / num_proc)
    start_timeout: int = Field(300, ge=10)  # seconds for all ranks to start
    eval_negatives: int = Field(99, ge=1)  # the paper's protocol: held-out item among N negatives
    eval_k: int = Field(10, ge=1)
    paper_protocol: bool = False  # also train on leave-last-out and report the paper's HR/NDCG
    # Train the serving model on every interaction and write `ncf_scores`. None: only when the
    # published lists read it ("ncf" in recommend.sources); otherwise the stage trains and scores the
    # offline model alone (the evaluate stage's `ncf` row) and skips a second Horovod training.
    publish_scores: bool | None = None
    seed: int = 42
    score_block: int = Field(256, ge=1)  # users scored per model call in batch scoring
    registered_model: str = "watchnext-ncf"

    @field_validator("mlp_layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v) or v[0] % 2:
            raise ValueError(f"mlp_layers must be positive sizes with an even first one, got {v}")
        return v


# ------------------------------------------------------------------------------------------- report
class ReportConfig(_Strict):
    """The run report (stages/report.py): one self-contained HTML page per run date."""

    # report-<run_date>.html is written here (a local folder or a URI)
    out_dir: StorageUri = Field("./reports", validate_default=True)
    sample_users: int = Field(5, ge=0, le=100)  # users whose lists (with reasons) are shown
    popularity_buckets: int = Field(10, ge=2, le=100)  # item-popularity buckets of the exposure plot
    # Base of the links to the stage runs; null: the tracking URI when it is a server, else `mlflow ui`.
    mlflow_ui_url: str | None = None
    # A `benchmarks/scale.py` results JSON (a local path): adds a "Scale runs" section, wall time and
    # peak memory per stage against the data size. null: no such section (`make scale` sets it).
    scale_results: LocalPath | None = None


# -------------------------------------------------------------------------------------------- domain
class DomainConfig(_Strict):
    """The words for the catalogue in what users and readers see: the published reasons
    (recommend/publish.py) and the run report (report/, stages/report.py). The defaults speak about
    movies and give today's text to the character; set them for another catalogue, e.g.

    * music (play counts of artists): ``verb: listened to``, ``users: Listeners``, ``item: artist``,
      ``items: artists``;
    * books: ``verb: read``, ``users: Readers``, ``item: book``, ``items: books``;
    * a shop: ``verb: bought``, ``users: Shoppers``, ``item: product``, ``items: products``.

    Each word is used as written (no capitalisation or plural rules are applied); it must be
    non-empty, without leading or trailing whitespace. The words of the reasons (verb, users, service)
    hold only letters, digits, spaces, ``_``, ``.`` and ``-``: the recommend stage logs the share of
    each kind of reason as the MLflow metric ``reason_share.<reason>``, and MLflow refuses other
    characters in a metric name (an apostrophe would fail the stage after its tables were written).
    """

    # past tense: "Because you <verb> X", "<users> with similar taste <verb> this", the report's
    # "items <verb>" count, "latest <verb>:" history and "most-<verb> items" axis (spaces -> hyphens)
    verb: str = "watched"
    # who has "similar taste" in the user-based reason: "<users> with similar taste <verb> this"
    users: str = "Viewers"
    # the service's name in the popularity reason: "Popular on <service>"
    service: str = "watchnext"
    # what an item's name is called: the column heading of the report's sample lists
    item: str = "title"
    # the plural noun of the report's counts, axes and headings ("items <verb>", "catalogue items")
    items: str = "items"

    @field_validator("verb", "users", "service", "item", "items")
    @classmethod
    def _word(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty word")
        if v != v.strip():
            raise ValueError("must not start or end with whitespace")
        return v

    @field_validator("verb", "users", "service")
    @classmethod
    def _metric_name_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[\w .-]+", v):
            raise ValueError(
                "may hold only letters, digits, spaces, '_', '.' and '-' (the reasons it writes name "
                "MLflow metrics, reason_share.<reason>)"
            )
        return v


# ---------------------------------------------------------------------------------------------- root
# Every stage, in pipeline order (watchnext.pipeline.STAGES registers the same names).
ALL_STAGES = ("ingest", "als", "clusters", "similarities", "ncf", "recommend", "evaluate", "report")


class PipelineConfig(_Strict):
    # Stages `watchnext run` executes, in order; each must be a known stage name.
    stages: list[str] = Field(default_factory=lambda: list(ALL_STAGES))
    seed: int = 42


class Config(_Strict):
    env: str = "local"
    spark: SparkConfig = Field(default_factory=SparkConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    als: AlsConfig = Field(default_factory=AlsConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)
    clusters: ClustersConfig = Field(default_factory=ClustersConfig)
    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    ncf: NcfConfig = Field(default_factory=NcfConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    domain: DomainConfig = Field(default_factory=DomainConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    # A/B experiments on the recipe (docs/experiments.md); at most one enabled at a time.
    experiments: list[ExperimentConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _experiments(self) -> Config:
        validate_experiments(self.recommend, self.experiments)
        return self

    @property
    def experiment(self) -> ExperimentConfig | None:
        """The enabled experiment, if any."""
        return next((e for e in self.experiments if e.enabled), None)

    def enable_experiment(self, name: str) -> Config:
        """A copy with experiment ``name`` enabled (and no other): the Airflow DAG's ``experiment``
        param and ``--experiment``. ``ConfigError`` naming the known ones if there is none."""
        names = [e.name for e in self.experiments]
        if name not in names:
            raise ConfigError(f"no experiment {name!r} in the config; experiments: {names or 'none'}")
        data = self.model_dump(mode="json")
        for e in data["experiments"]:
            e["enabled"] = e["name"] == name
        return validate_config(data)

    @field_validator("env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError(f"invalid env name {v!r}")
        return v

    @property
    def ncf_publishes_scores(self) -> bool:
        """Whether the NCF stage trains the serving model and writes ``ncf_scores``."""
        p = self.ncf.publish_scores
        return "ncf" in self.recommend.sources if p is None else p

    def table_path(self, name: str) -> str:
        """Location of the Delta table ``name`` under the lakehouse root."""
        return f"{self.storage.lakehouse.rstrip('/')}/{name}"

    def with_overrides(self, *overrides: str) -> Config:
        """A copy with ``key.path=value`` overrides applied and validated (as ``--conf`` does)."""
        data = self.model_dump(mode="json")
        for item in overrides:
            _set_dotted(data, *_parse_override(item))
        return validate_config(data)

    def flat(self) -> dict[str, Any]:
        """The resolved config as ``{"dotted.key": value}``, e.g. for MLflow params."""
        return _flatten(self.model_dump(mode="json"))


# ----------------------------------------------------------------------------------------- loading
def default_conf_dir() -> Path:
    """``$WATCHNEXT_CONF_DIR``, else ``./conf``, else the ``conf/`` of the source checkout."""
    if os.environ.get(CONF_DIR_VAR):
        return Path(os.environ[CONF_DIR_VAR])
    cwd = Path.cwd() / "conf"
    if (cwd / "base.yaml").exists():
        return cwd
    return Path(__file__).resolve().parents[2] / "conf"


def load_config(
    env: str | None = None,
    files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    conf_dir: str | Path | None = None,
) -> Config:
    """Merge the layers and validate them into a :class:`Config`."""
    conf_dir = Path(conf_dir) if conf_dir else default_conf_dir()
    env = env or os.environ.get(ENV_VAR) or "local"
    base = conf_dir / "base.yaml"
    if not base.exists():
        raise ConfigError(f"config file not found: {base} (set {CONF_DIR_VAR} or run from the project root)")
    merged: dict[str, Any] = {}
    layer_files = [base, conf_dir / f"{env}.yaml", *map(Path, files)]
    for i, path in enumerate(layer_files):
        if i == 1 and not path.exists():
            raise ConfigError(f"unknown env {env!r}: no {path}")
        merged = _deep_merge(merged, _read_yaml(path))
    merged["env"] = env
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(merged, key, value)
    return validate_config(merged)


def validate_config(data: Mapping[str, Any]) -> Config:
    """Validate a plain mapping, resolving ``${env:...}`` references first."""
    resolved = _resolve_env(copy.deepcopy(dict(data)), ())
    try:
        return Config.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    _refuse_literal_secrets(data, (), path)
    return data


def _refuse_literal_secrets(node: Any, key: tuple[str, ...], path: Path) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _refuse_literal_secrets(v, (*key, str(k)), path)
    elif (
        key
        and _SECRET_KEY.search(key[-1])
        and isinstance(node, str)
        and node
        and not _ENV_REF.fullmatch(node)
    ):
        raise ConfigError(
            f"{path}: '{'.'.join(key)}' holds a literal secret; "
            "use ${env:NAME} and set it in the environment"
        )


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.]+", key):
        raise ConfigError(f"--conf expects key.path=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--conf {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _deep_merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _resolve_env(node: Any, key: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _resolve_env(v, (*key, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_env(v, key) for v in node]
    if isinstance(node, str) and "${env:" in node:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"config key '{'.'.join(key)}' needs environment variable {name}, which is not set"
            )

        return _ENV_REF.sub(sub, node)
    return node


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # A whole-model check (e.g. the experiments against the recipe) names its keys itself: its input
        # is the whole config.
        shown = err["type"] not in ("extra_forbidden", "missing") and not isinstance(err["input"], dict)
        got = f" (got {err['input']!r})" if shown else ""
        lines.append(f"config key '{loc}': {msg}{got}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}
