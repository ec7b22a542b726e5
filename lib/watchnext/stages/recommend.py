"""Recommend stage: blend every source, cap per genre cluster, exactly N per user, publish to Delta.

1. **Weights.** On the evaluation protocol's train split, carve a validation split; fit every source on
   the rest (ALS with the registered model's parameters, co-occurrence neighbours, user neighbours,
   cluster affinity, popularity, trending), pool their candidates for a sample of validation users on
   the driver and tune the blend weights by NDCG@K of the capped list with Optuna
   (``recommend/tune.py``, ``models/blend.py``). Weights and the search are logged to MLflow.
2. **Offline score.** The same sources on the whole train split, blended with those weights, give
   the ``blend`` lists in ``eval_recommendations``: the evaluate stage scores the published recipe
   next to every single source. The train-split models the als and similarities stages stored
   (``eval_factors``, ``eval_neighbors``) are read, not fitted again; a missing one is fitted.
3. **Publish.** The sources as published by the earlier stages for the run date (``user_factors`` /
   ``item_factors``, ``item_similarities``, ``user_neighbors``, ``user_cluster_affinity``, and
   ``ncf_scores`` when the NCF stage ran) give every known user (``user_index``) exactly
   ``recommend.n`` unseen items, checked before anything is written. Tables, each one Delta commit:

   * ``recommendations``: user_id, user_idx, rank, item_id, title, score, reason, sources,
     model_versions, experiment, variant, run_id, run_date; partitioned by run_date, replaced with
     ``replaceWhere``;
   * ``recommendations_latest``: the newest run date's rows sorted by user_id for the serving read
     (``watchnext.serving``); only replaced when the run date is not older than the one it holds;
   * ``genre_rows``: user_id, row, cluster_id, label, rank, item_id, title, score: the user's
     favourite clusters, each with its items ranked by the user's blended score, backfilled by the
     cluster's popular items;
   * ``because_you_watched``: item_id, rank, neighbor_id, title, score, source, reason.

   * ``experiment_assignments`` (with an enabled experiment, ``recommend/variants.py``): experiment,
     user_id, variant, first_assigned; the users newly inside its traffic are appended before the lists
     are ranked, each user's list then comes from their variant's recipe (the base recipe outside the
     traffic), offline too.

   Each write is one commit whose ``userMetadata`` is ``{"watchnext.run_date", "watchnext.run_id"}`` (the
   MLflow run); ``recommendations_latest`` also carries them as table properties, set by the same
   ``CREATE OR REPLACE`` commit that writes its rows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import data_profile, tables, tracking
from watchnext.config import Config
from watchnext.constants import (
    COL_CLUSTER,
    COL_EXPERIMENT,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_LABEL,
    COL_RANK,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_USER_IDX,
    COL_VARIANT,
    TABLE_BECAUSE_YOU_WATCHED,
    TABLE_CLUSTERS,
    TABLE_EXPERIMENT_ASSIGNMENTS,
    TABLE_GENRE_ROWS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_USER_INDEX,
)
from watchnext.evaluation import protocol
from watchnext.models.als import resolve_confidence
from watchnext.models.ease import top_k_ease
from watchnext.recommend import candidates, publish, registry, variants
from watchnext.recommend.sources import Sources, fit_sources, published_sources, read_published
from watchnext.recommend.tune import BlendTuning, tune_blend

log = logging.getLogger(__name__)

MODEL_NAME = "blend"  # the published recipe (learned ranker, linear blend or single source), offline
LINEAR_MODEL_NAME = "linear_blend"  # the tuned linear blend, scored beside a learned recipe
EASE_MODEL_NAME = "ease"


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_id = tracking.active_run_id()
    interactions = (
        tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
        .select(COL_USER, COL_ITEM, COL_USER_IDX, COL_ITEM_IDX, "rating", COL_TIMESTAMP)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    cfg, left_out, notes = _what_the_data_feeds(cfg, interactions)
    rc = cfg.recommend
    item_clusters = read_published(spark, cfg, TABLE_ITEM_CLUSTERS, run_date).select(
        COL_ITEM, COL_ITEM_IDX, COL_CLUSTER
    )
    als_params, versions = registry.model_versions(cfg)
    if "als" not in versions and cfg.als.confidence == "auto":
        # No registered model to read the als stage's scheme from: the configured parameters, with
        # auto resolved as the stage resolves it with tuning off (counts: log).
        decision = resolve_confidence(
            interactions, "auto", cfg.ingest.feedback, implicit_prefs=cfg.als.implicit_prefs, tuning=False
        )
        als_params = als_params.model_copy(update={"confidence": decision.scheme})
    summary: dict[str, Any] = {"model_versions": versions, "sources": list(rc.sources)}
    if left_out:
        summary["left_out"] = left_out
    if notes:
        summary["notes"] = notes
    tracking.log_params({"blend.sources": ",".join(rc.sources), "blend.n": rc.n})
    persisted: list[DataFrame] = [interactions]
    sources: list[Sources] = []
    tuned: BlendTuning | None = None
    pool: ThreadPoolExecutor | None = None
    try:
        train, test = protocol.split(interactions, cfg.evaluation)
        train = train.persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(train)

        # 1. weights tuned on a validation split of train
        ts = time.perf_counter()
        weights, ranker, recipe = dict(rc.weights), None, "linear"
        if rc.tuning.enabled:
            tuned = tune_blend(cfg, train, item_clusters, als_params)
            _log_tuning(tuned)
            summary["ranker_version"] = _log_ranker(cfg, tuned)
            weights, ranker, recipe = tuned.weights, tuned.ranker, tuned.recipe
            summary["tuning"] = tuned.summary()
        summary["recipe"] = recipe
        tracking.log_params({"blend.recipe": recipe})
        summary["weights"] = {s: round(w, 4) for s, w in weights.items()}
        summary["tuning_seconds"] = round(time.perf_counter() - ts, 2)
        tracking.log_params({f"blend.weight.{s}": w for s, w in weights.items()})

        # 2. the blend on the protocol's train split, scored by the evaluate stage: in a thread beside
        # the publish step (they share only read-only inputs; each one's driver-side work, planning and
        # commits leave the executors idle, which the other fills). MLflow calls stay on this thread.
        # Lineage travels in the data commit itself: the rows carry run_id / run_date, the commit's
        # userMetadata names the run (no second ALTER TABLE commit a crash could separate from it).
        props = {"watchnext.run_id": run_id, "watchnext.run_date": run_date.isoformat()}
        note = json.dumps(props, sort_keys=True)
        users = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select(COL_USER, COL_USER_IDX)
        # The experiment's variant of each user (recorded first: experiment_assignments only grows).
        served = _served(spark, cfg, users, run_date, note, summary).persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(served)
        recipes = variants.recipes(
            cfg,
            weights,
            ranker,
            tuned_weights=tuned.search.weights if tuned is not None else None,
            trained=tuned.trained if tuned is not None else None,
        )
        pool = ThreadPoolExecutor(max_workers=1)
        offline_done = pool.submit(
            _offline_lists, spark, cfg, train, test, item_clusters, als_params, recipes, served,
            tuned_weights=tuned.search.weights if tuned is not None and recipe != "linear" else None,
            run_date=run_date, run_id=run_id,
        )  # fmt: skip

        # 3. publish: each recipe ranks the users it serves
        ts = time.perf_counter()
        published = published_sources(spark, cfg, run_date, interactions, item_clusters)
        sources.append(published)
        scored_parts, top_parts, counts = [], [], {}
        for r in recipes:
            who = variants.users_of(served, r) if len(recipes) > 1 else served
            part = candidates.scored_pool(
                r.cfg, published, who.select(COL_USER_IDX), r.weights, item_clusters, r.n, r.ranker
            ).persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(part)
            part_top = part.where(F.col(COL_RANK).isNotNull())
            counts[",".join(str(v) for v in r.serves)] = publish.check_exactly_n(part_top, who, r.n)["users"]
            scored_parts.append(part)
            top_parts.append(part_top)
        scored = reduce(DataFrame.unionByName, scored_parts)
        top = reduce(DataFrame.unionByName, top_parts).persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(top)
        summary["users"] = {"users": sum(counts.values()), "items_per_user": rc.n}
        if len(recipes) > 1:
            summary["users"]["by_variant"] = counts
        items = tables.read_run_date(spark, cfg.table_path(TABLE_ITEMS), run_date).select(
            COL_ITEM, COL_ITEM_IDX, COL_TITLE
        )
        labels = read_published(spark, cfg, TABLE_CLUSTERS, run_date).select(COL_CLUSTER, COL_LABEL)
        out = (
            publish.decorate(top, users, items, labels, versions, cfg.domain)
            .join(served.select(COL_USER_IDX, COL_EXPERIMENT, COL_VARIANT), COL_USER_IDX)
            .select("*", F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE))
        )
        path = cfg.table_path(TABLE_RECOMMENDATIONS)
        tables.overwrite_run_date(out, path, run_date, note, add_columns=True)
        summary["latest"] = publish.publish_latest(spark, cfg, run_date, props)

        lineage = [F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)]
        extra = {
            TABLE_GENRE_ROWS: publish.genre_rows(cfg, published, scored, item_clusters, users, items, labels),
            TABLE_BECAUSE_YOU_WATCHED: publish.because_you_watched(
                read_published(spark, cfg, TABLE_ITEM_SIMILARITIES, run_date),
                items,
                rc.item_source,
                rc.because_k,
                cfg.domain,
            ),
        }
        for table, df in extra.items():
            tables.overwrite_run_date(df.select("*", *lineage), cfg.table_path(table), run_date, note)
        summary["publish_seconds"] = round(time.perf_counter() - ts, 2)
        summary["reasons"] = publish.reason_mix(out, cfg.domain)
        tracking.log_metrics({f"reason_share.{r}": v for r, v in summary["reasons"].items()})
        tracking.log_text(publish.sample_text(out), "recommendations_sample.txt")
        summary["tables"] = {
            t: cfg.table_path(t)
            for t in (
                TABLE_RECOMMENDATIONS,
                TABLE_RECOMMENDATIONS_LATEST,
                TABLE_GENRE_ROWS,
                TABLE_BECAUSE_YOU_WATCHED,
            )
        }
        summary.update(offline_done.result())
    finally:
        if pool is not None:
            pool.shutdown(wait=True)  # the offline lists finish (or fail) before anything is released
        for src in sources:
            src.release()
        for df in persisted:
            df.unpersist()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _served(
    spark: SparkSession, cfg: Config, users: DataFrame, run_date: dt.date, note: str, summary: dict[str, Any]
) -> DataFrame:
    """``users`` with the experiment and variant each is served (nulls without an experiment); the
    users newly inside the enabled experiment's traffic are appended to ``experiment_assignments`` in
    one commit first (a re-run of the date adds nothing)."""
    exp = cfg.experiment
    if exp is None:
        return variants.served_users(users, None, None)
    path = cfg.table_path(TABLE_EXPERIMENT_ASSIGNMENTS)
    existing = tables.read(spark, path) if tables.exists(spark, path) else None
    added = variants.assignments_to_add(users, exp, existing, run_date).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n_added = added.count()
        if n_added or existing is None:
            tables.append(added, path, note)
    finally:
        added.unpersist()
    summary["experiment"] = {"name": exp.name, "assigned_now": n_added}
    tracking.log_params({"experiment": exp.name, "experiment.salt": exp.salt})
    log.info("experiment %s: %d users newly assigned", exp.name, n_added)
    return variants.served_users(users, exp, tables.read(spark, path))


def _what_the_data_feeds(cfg: Config, interactions: DataFrame) -> tuple[Config, dict[str, str], list[str]]:
    """``cfg`` without the recommend sources the interactions cannot feed (``data_profile.py``), the
    sources left out with why, and notes on what the data leaves of the others; all logged."""
    profile = data_profile.time_profile(interactions)
    window = cfg.evaluation.trending_window_days
    left_out = data_profile.recommend_left_out(cfg.recommend, profile, window)
    for source, why in left_out.items():
        log.warning("recommend: %s left out of the recipe: %s", source, why)
    tracking.log_params({f"left_out.{s}": why[:500] for s, why in left_out.items()})
    notes = []
    if "ease" in cfg.recommend.sources and cfg.recommend.ease.session_weight > 0:
        note = data_profile.session_note(profile)
        if note:
            log.info("recommend: %s", note)
            notes.append(note)
    rc = data_profile.recommend_without(cfg.recommend, left_out)
    return cfg.model_copy(update={"recommend": rc}), left_out, notes


def _offline_lists(
    spark: SparkSession,
    cfg: Config,
    train: DataFrame,
    test: DataFrame,
    item_clusters: DataFrame,
    als_params: Any,
    recipes: list[variants.Recipe],
    served: DataFrame,
    *,
    tuned_weights: dict[str, float] | None,
    run_date: dt.date,
    run_id: str,
) -> dict[str, Any]:
    """The published recipe (``blend``), the tuned linear blend beside a learned or single-source
    recipe (``linear_blend``) and EASE on the protocol's train split, for the test users, to
    ``eval_recommendations``; the train-split models the als and similarities stages stored are read."""
    ts = time.perf_counter()
    k = max(cfg.evaluation.ks + [cfg.evaluation.k])
    offline = fit_sources(cfg, train, item_clusters, als_params, stored=(spark, run_date))
    try:
        test_users = test.select(COL_USER_IDX)
        if len(recipes) == 1:
            base = recipes[0]
            recs = candidates.top_n(
                base.cfg, offline, test_users, item_clusters, base.weights, k, base.ranker
            )
        else:  # each test user's list from the recipe of the variant they are served
            who = served.join(test_users.distinct(), COL_USER_IDX, "left_semi")
            recs = reduce(
                DataFrame.unionByName,
                [
                    candidates.top_n(
                        r.cfg,
                        offline,
                        variants.users_of(who, r).select(COL_USER_IDX),
                        item_clusters,
                        r.weights,
                        k,
                        r.ranker,
                    )  # fmt: skip
                    for r in recipes
                ],
            )
        protocol.write_recommendations(recs, cfg, MODEL_NAME, run_date, run_id)
        if tuned_weights is not None:  # the linear blend scored beside the recipe
            linear = candidates.top_n(cfg, offline, test_users, item_clusters, tuned_weights, k)
            protocol.write_recommendations(linear, cfg, LINEAR_MODEL_NAME, run_date, run_id)
        if offline.ease is not None:  # EASE has no stage of its own: its offline lists come from here
            ease = top_k_ease(offline.ease, offline.history, test_users, k)
            protocol.write_recommendations(ease, cfg, EASE_MODEL_NAME, run_date, run_id)
        # An earlier run for the date may have written lists this one did not (another recipe, EASE
        # since left out): the evaluate stage would score them as this run's.
        not_written = [LINEAR_MODEL_NAME] if tuned_weights is None else []
        if offline.ease is None:
            not_written.append(EASE_MODEL_NAME)
        cleared = protocol.clear_recommendations(spark, cfg, not_written, run_date, run_id)
        if cleared:
            log.info("offline lists of %s from an earlier run for %s removed", ", ".join(cleared), run_date)
    finally:
        offline.release()
    log.info("offline blend: train-split models %s", offline.origin)
    return {
        "offline_models": dict(offline.origin),
        "offline_cleared": cleared,
        "offline_seconds": round(time.perf_counter() - ts, 2),
    }


def _log_ranker(cfg: Config, tuned: BlendTuning) -> str | None:
    """The trained ranker to the stage's MLflow run (booster, importances); registered as
    ``recommend.learned.registered_model`` when it is the published recipe."""
    if tuned.trained is None or not cfg.mlflow.enabled:
        return None
    import mlflow

    booster = tuned.trained.get_booster()
    tracking.log_dict(
        {"importances": tuned.importances, "best_iteration": tuned.best_iteration, "recipe": tuned.recipe},
        "ranker.json",
    )
    if tuned.recipe != "learned":  # kept for inspection, not served: the booster as JSON only
        tracking.log_text(bytes(booster.save_raw("json")).decode(), "ranker/booster.json")
        return None
    import xgboost

    name = cfg.recommend.learned.registered_model
    info = mlflow.xgboost.log_model(
        booster,
        name="ranker",
        registered_model_name=name,
        pip_requirements=[f"xgboost-cpu=={xgboost.__version__}"],  # no environment inference
    )
    log.info("registered %s version %s", name, info.registered_model_version)
    return str(info.registered_model_version)


def _log_tuning(tuned: BlendTuning) -> None:
    """The weight search to MLflow (each trial's value as a step) and the log."""
    k, search = tuned.k, tuned.search
    for i, (_, value) in enumerate(search.trials):
        tracking.log_metrics({f"validation_ndcg_at_{k}": value}, step=i)
    tracking.log_metrics(
        {
            f"best_validation_ndcg_at_{k}": search.value,
            f"configured_validation_ndcg_at_{k}": tuned.configured,
            **{f"single.{s}.validation_ndcg_at_{k}": v for s, v in search.single_source.items()},
        }
    )
    tracking.log_dict(
        {"weights": search.weights, "single_source": search.single_source}, "blend_weights.json"
    )
    if tuned.holdout:
        tracking.log_metrics({f"holdout.{r}.ndcg_at_{k}": v for r, v in tuned.holdout.items()})
        log.info(
            "recipe %s; held-back NDCG@%d: %s",
            tuned.recipe,
            k,
            ", ".join(f"{r} {v:.4f}" for r, v in sorted(tuned.holdout.items(), key=lambda kv: -kv[1])),
        )
    if tuned.leave_one_out:
        tracking.log_metrics({f"holdout.without.{s}.ndcg_at_{k}": v for s, v in tuned.leave_one_out.items()})
        log.info(
            "held-back NDCG@%d of the linear blend without each source (with all: %.4f): %s",
            k,
            tuned.holdout.get("linear", float("nan")),
            ", ".join(f"{s} {v:.4f}" for s, v in tuned.leave_one_out.items()),
        )
    if tuned.importances:
        tracking.log_metrics({f"ranker.importance.{f}": v for f, v in tuned.importances.items()})
    log.info(
        "blend weights %s: validation NDCG@%d %.4f (configured %.4f; single sources %s)",
        search.weights,
        k,
        search.value,
        tuned.configured,
        search.single_source,
    )
