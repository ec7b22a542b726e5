"""Column and table names shared by every stage.

Functions take column names as keyword arguments defaulting to these constants, so a caller can map
their own schema (the Microsoft Recommenders convention).
"""

from __future__ import annotations

# Interactions
COL_USER = "user_id"  # external user id, string
COL_ITEM = "item_id"  # external item id, string
COL_RATING = "rating"  # explicit rating or implicit weight, double
COL_TIMESTAMP = "timestamp"  # event time, Spark TimestampType (UTC)
COL_USER_IDX = "user_idx"  # stable int index (ALS needs int ids)
COL_ITEM_IDX = "item_idx"
COL_PREDICTION = "prediction"
COL_SCORE = "score"
COL_RANK = "rank"

# Items
COL_TITLE = "title"
COL_YEAR = "year"
COL_GENRES = "genres"  # array<string>
COL_TAGS = "tags"  # array<string>

# Lineage
COL_RUN_DATE = "run_date"  # the scheduled date a row belongs to (DateType)
COL_RUN_ID = "run_id"  # MLflow run id of the stage that wrote it
COL_FIRST_SEEN = "first_seen"

# Rejects
COL_DATASET = "dataset"
COL_REASON = "reason"
COL_RECORD = "record"
COL_CORRUPT = "_corrupt_record"

# Delta tables (names under the lakehouse root)
TABLE_INTERACTIONS = "interactions"
TABLE_ITEMS = "items"
TABLE_REJECTS = "rejects"
TABLE_USER_INDEX = "user_index"
TABLE_ITEM_INDEX = "item_index"
TABLE_USER_FACTORS = "user_factors"
TABLE_ITEM_FACTORS = "item_factors"
TABLE_EVAL_RECS = "eval_recommendations"  # each model's top-K on the evaluation protocol's train split
TABLE_EVAL_PREDICTIONS = "eval_predictions"  # explicit rating predictions for the test pairs
# The train-split models behind eval_recommendations, kept so the recommend stage's offline blend reads
# them instead of fitting them again: ALS factors (model "als") and co-occurrence neighbours
# (models "item_cooccurrence", "user_cooccurrence").
TABLE_EVAL_FACTORS = "eval_factors"
TABLE_EVAL_NEIGHBORS = "eval_neighbors"
TABLE_EVALUATION = "evaluation"
TABLE_ITEM_FEATURES = "item_features"  # content feature vectors
TABLE_ITEM_CLUSTERS = "item_clusters"
TABLE_CLUSTERS = "clusters"
TABLE_USER_CLUSTER_AFFINITY = "user_cluster_affinity"
TABLE_ITEM_SIMILARITIES = "item_similarities"
TABLE_USER_NEIGHBORS = "user_neighbors"

COL_MODEL = "model"
COL_METRIC = "metric"
COL_K = "k"
COL_VALUE = "value"
COL_FEATURES = "features"  # factor vector, array<float>

# Clusters and neighbours
COL_CLUSTER = "cluster_id"
COL_LABEL = "label"
COL_SIZE = "size"
COL_TOP_GENRES = "top_genres"
COL_TOP_TAGS = "top_tags"
COL_SHARE = "share"
COL_N_INTERACTIONS = "n_interactions"
COL_NEIGHBOR = "neighbor_id"
COL_NEIGHBOR_IDX = "neighbor_idx"
COL_SOURCE = "source"

# Recommendations (recommend stage; read by watchnext.serving)
TABLE_RECOMMENDATIONS = "recommendations"  # every run date's top-N lists, partitioned by run_date
TABLE_RECOMMENDATIONS_LATEST = "recommendations_latest"  # the newest run's lists, sorted by user_id
COL_SOURCES = "sources"  # array<string>: the candidate sources that proposed the item
COL_MODEL_VERSIONS = "model_versions"  # map<string,string>: model name -> registry version
TABLE_GENRE_ROWS = "genre_rows"  # Netflix-style rows: per user, favourite clusters and their items
TABLE_BECAUSE_YOU_WATCHED = "because_you_watched"  # item -> neighbours with reason text
TABLE_NCF_SCORES = "ncf_scores"  # NeuMF scores of candidate (user, item) pairs

# A/B experiments (docs/experiments.md)
TABLE_EXPERIMENT_ASSIGNMENTS = "experiment_assignments"  # experiment, user_id, variant, first_assigned
TABLE_EXPERIMENT_RESULTS = "experiment_results"  # per run date, variant and metric: lift, CI, p, verdict
COL_EXPERIMENT = "experiment"  # on recommendations(_latest): the user's experiment (null: none)
COL_VARIANT = "variant"  # the user's variant in it (null: the base recipe)
COL_ANCHOR = "anchor_id"  # the watched item behind a "because you watched" reason
COL_ANCHOR_IDX = "anchor_idx"  # its index in the candidate pool
COL_ROW = "row"  # position of a genre row on a user's page
