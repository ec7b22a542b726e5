"""Item content features: one L2-normalised, weighted block per signal, assembled and normalised again.

For an item ``i`` and each block ``b`` with weight ``w_b > 0`` (``ContentConfig``):

* **genres**: multi-hot over the genre vocabulary; ``x[g] = 1`` if the item carries genre ``g``
  (trimmed; ``"(no genres listed)"`` counts as no genre; repeats count once).
* **tags**: TF-IDF, ``x[t] = tf(t, i) * idf(t)`` with ``tf`` the number of times ``t`` occurs among
  the item's tags after lower-casing and trimming (repeats count), ``idf(t) = ln((N + 1) / (df(t) + 1))``
  (Spark's IDF), ``N`` the number of items the model was fitted on (with or without tags) and ``df(t)``
  the number of those items carrying ``t``. Vocabulary: the terms in at least ``min_df`` items, at most
  ``tag_vocab_size`` of them (the most frequent by total occurrences).
* **title**: TF-IDF as for tags over title words (vocabulary ``title_vocab_size``, ``min_df``). Title
  cleaning: trim, drop a trailing release year ``"(1995)"`` or ``"(1994-1998)"``, move a trailing
  article (``"Shawshank Redemption, The"`` -> ``"The Shawshank Redemption"``, also the foreign
  articles MovieLens moves: ``Les``, ``La``, ``Le``, ``Il``, ``El``, ...), split on every character that
  is not a letter or a digit, lower-case, and drop Spark's English stop words plus those foreign
  articles that are not English words (so ``"the"``, ``"a"``, ``"les"``, the ``"s"`` of
  ``"Schindler's"`` and the ``"l"`` of ``"Avventura, L'"`` are gone; numbers such as the ``2`` of a
  sequel stay).
* **year**: one-hot of the release-year bucket ``floor(year / Y) * Y`` with ``Y = year_bucket_years``,
  labelled ``"1990-1999"`` (``"1995"`` when ``Y = 1``); an unknown year, or a bucket not seen at fit
  time, is all zeros.

Every vocabulary is sorted (genres, tags and title words alphabetically, year buckets
chronologically), so the vector layout depends only on the fitted data, not on its partitioning
(except for ties in frequency at a ``*_vocab_size`` cut).

Then ``u_b = x_b / ||x_b||_2`` (0 when ``x_b = 0``), ``v = concat_b(sqrt(w_b) * u_b)`` and
``features = v / ||v||_2``. Hence, for two items ``i, j``::

    cos(i, j) = sum_b w_b * cos_b(i, j) / sqrt(W_i * W_j),   W_i = sum of w_b over b with x_b(i) != 0

with ``cos_b = u_b(i) . u_b(j)``. When every block is non-empty for both items this is the weighted
average ``sum_b w_b cos_b / sum_b w_b`` of the per-block cosines (only the ratios of the weights
matter). A block with weight 0 is left out of the vector entirely; a block whose fitted vocabulary
is empty (e.g. a source without tags) is dropped with a warning. **An item with no content at all
(no genre, tag, title word or year in the vocabularies) gets the all-zero vector**: it has no cosine
with anything, and :func:`watchnext.models.clusters.fit_clusters` keeps it out of k-means.

Everything is Spark MLlib stages (``SQLTransformer`` for the cleaning, ``RegexTokenizer``,
``StopWordsRemover``, ``CountVectorizer``, ``IDF``, ``StringIndexer``, ``OneHotEncoder``,
``Normalizer``, ``ElementwiseProduct``, ``VectorAssembler``) in one :class:`PipelineModel`, so new
items can be transformed later (:func:`transform_content`) and the model saved with MLlib's writer.
The estimators are fitted one block at a time (so that vocabularies can be sorted and empty blocks
dropped) and the fitted stages assembled into that one model. ``features`` is an ml ``Vector`` stored
sparse or dense per row, whichever is smaller (``VectorAssembler`` compresses): sparse for any real
vocabulary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.feature import (
    IDF,
    CountVectorizer,
    CountVectorizerModel,
    ElementwiseProduct,
    Normalizer,
    OneHotEncoder,
    RegexTokenizer,
    SQLTransformer,
    StopWordsRemover,
    StringIndexer,
    VectorAssembler,
)
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame

from watchnext.checks import require_columns
from watchnext.config import ContentConfig
from watchnext.constants import (
    COL_FEATURES,
    COL_GENRES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_TAGS,
    COL_TITLE,
    COL_YEAR,
)

log = logging.getLogger(__name__)

BLOCK_GENRES = "genres"
BLOCK_TAGS = "tags"
BLOCK_TITLE = "title"
BLOCK_YEAR = "year"
BLOCKS: tuple[str, ...] = (BLOCK_GENRES, BLOCK_TAGS, BLOCK_TITLE, BLOCK_YEAR)  # order in the vector

NO_GENRES = "(no genres listed)"
# Trailing articles MovieLens-style titles carry ("Misérables, Les"); moved to the front, then dropped
# as stop words. "L'" is not listed: the tokenizer splits it off as "l", a stop word below.
TITLE_ARTICLES: tuple[str, ...] = (
    "The", "A", "An", "Les", "La", "Le", "Il", "El", "Los", "Las", "Das", "Der", "Die", "Det", "Den",
    "Une", "Un",
)  # fmt: skip
# Added to Spark's English stop words: the foreign articles above, except the English words "die" and
# "den" (and "l" for "L'").
EXTRA_TITLE_STOP_WORDS: tuple[str, ...] = (
    "l", "la", "le", "les", "il", "el", "los", "las", "das", "der", "det", "une", "un",
)  # fmt: skip
# A trailing "(1995)" or "(1994-1998)"; character classes rather than backslashes, which SQL literals
# would need escaped twice.
YEAR_SUFFIX = "[ ]*[(][0-9]{4}(-[0-9]{4})?[)]$"

_P = "_cf_"  # prefix of the pipeline's intermediate columns


def _c(name: str) -> str:
    return f"{_P}{name}"


@dataclass(frozen=True)
class ContentFeatures:
    """A fitted content model and the features of the items it was fitted on."""

    model: PipelineModel  # transforms an items frame (same column names) to features
    features: DataFrame  # col_item, col_item_idx, col_features (ml Vector)
    blocks: dict[str, tuple[int, int]]  # block -> (offset, size) in the vector, in vector order
    vocabulary: dict[str, list[str]]  # block -> its terms (year: bucket labels) in vector order


def _prep_statement(
    enabled: list[str], *, col_genres: str, col_tags: str, col_title: str, col_year: str, bucket: int
) -> str:
    """The cleaning as one SQLTransformer statement (a fitted stage, so new items get the same)."""
    empty = "CAST(array() AS array<string>)"
    exprs = []
    if BLOCK_GENRES in enabled:
        exprs.append(
            f"filter(transform(coalesce(`{col_genres}`, {empty}), x -> trim(x)), "
            f"x -> x IS NOT NULL AND x != '' AND lower(x) != '{NO_GENRES}') AS {_c('genre_terms')}"
        )
    if BLOCK_TAGS in enabled:
        exprs.append(
            f"filter(transform(coalesce(`{col_tags}`, {empty}), x -> lower(trim(x))), "
            f"x -> x IS NOT NULL AND x != '') AS {_c('tag_terms')}"
        )
    if BLOCK_TITLE in enabled:
        no_year = f"regexp_replace(trim(coalesce(`{col_title}`, '')), '{YEAR_SUFFIX}', '')"
        article = f"^(.+), ({'|'.join(TITLE_ARTICLES)})$"
        exprs.append(f"regexp_replace({no_year}, '{article}', '$2 $1') AS {_c('title_text')}")
    if BLOCK_YEAR in enabled:
        start = f"CAST(floor(`{col_year}` / {bucket}) * {bucket} AS INT)"
        label = f"lpad(CAST({start} AS STRING), 4, '0')"
        if bucket > 1:
            end = f"lpad(CAST({start} + {bucket - 1} AS STRING), 4, '0')"
            label = f"concat({label}, '-', {end})"
        exprs.append(f"CASE WHEN `{col_year}` IS NULL THEN NULL ELSE {label} END AS {_c('year_bucket')}")
    return "SELECT *, " + ", ".join(exprs) + " FROM __THIS__"


def _title_stages() -> list[Transformer]:
    tokenizer = RegexTokenizer(
        inputCol=_c("title_text"),
        outputCol=_c("title_tokens"),
        pattern=r"[^\p{L}\p{N}]+",
        gaps=True,
        toLowercase=True,
        minTokenLength=1,
    )
    stop = StopWordsRemover.loadDefaultStopWords("english") + list(EXTRA_TITLE_STOP_WORDS)
    remover = StopWordsRemover(
        inputCol=_c("title_tokens"),
        outputCol=_c("title_terms"),
        stopWords=stop,
        caseSensitive=False,
        locale="en_US",  # the JVM default locale may not be one Spark accepts
    )
    return [tokenizer, remover]


def _fit_terms(
    prepared: DataFrame, terms_col: str, out_col: str, *, vocab_size: int, min_df: int, tfidf: bool
) -> tuple[list[Transformer], list[str]]:
    """CountVectorizer (+ IDF) with the vocabulary sorted alphabetically."""
    tf_col = _c(f"{out_col}_tf") if tfidf else out_col
    cv = CountVectorizer(
        inputCol=terms_col, outputCol=tf_col, vocabSize=vocab_size, minDF=float(min_df), binary=not tfidf
    ).fit(prepared)
    terms = sorted(cv.vocabulary)
    if not terms:
        return [], []
    cvm = CountVectorizerModel.from_vocabulary(terms, inputCol=terms_col, outputCol=tf_col, binary=not tfidf)
    if not tfidf:
        return [cvm], terms
    idf = IDF(inputCol=tf_col, outputCol=out_col).fit(cvm.transform(prepared))
    return [cvm, idf], terms


def _fit_block(
    name: str, prepared: DataFrame, params: ContentConfig, out_col: str
) -> tuple[list[Transformer], list[str]]:
    """The fitted stages producing block ``name``'s raw vector in ``out_col``, and its terms."""
    if name == BLOCK_GENRES:
        return _fit_terms(prepared, _c("genre_terms"), out_col, vocab_size=1 << 18, min_df=1, tfidf=False)
    if name == BLOCK_TAGS:
        return _fit_terms(
            prepared,
            _c("tag_terms"),
            out_col,
            vocab_size=params.tag_vocab_size,
            min_df=params.min_df,
            tfidf=True,
        )
    if name == BLOCK_TITLE:
        return _fit_terms(
            prepared,
            _c("title_terms"),
            out_col,
            vocab_size=params.title_vocab_size,
            min_df=params.min_df,
            tfidf=True,
        )
    # year: "keep" sends a null or unseen bucket to index n, which dropLast turns into all zeros.
    indexer = StringIndexer(
        inputCol=_c("year_bucket"),
        outputCol=_c("year_index"),
        handleInvalid="keep",
        stringOrderType="alphabetAsc",  # zero-padded labels: chronological
    ).fit(prepared)
    labels = list(indexer.labels)
    if not labels:
        return [], []
    onehot = OneHotEncoder(inputCol=_c("year_index"), outputCol=out_col, dropLast=True).fit(
        indexer.transform(prepared)
    )
    return [indexer, onehot], labels


def fit_content_features(
    items: DataFrame,
    params: ContentConfig,
    *,
    col_item: str = COL_ITEM,
    col_item_idx: str = COL_ITEM_IDX,
    col_title: str = COL_TITLE,
    col_year: str = COL_YEAR,
    col_genres: str = COL_GENRES,
    col_tags: str = COL_TAGS,
    col_features: str = COL_FEATURES,
) -> ContentFeatures:
    """Fit the content model (module docstring) on ``items`` and return it with their features.

    Only the columns of blocks with a positive weight are required. The cleaned items are persisted
    while the estimators are fitted (one pass each) and unpersisted before returning; ``features`` is
    lazy. Raises ``ValueError`` when no block is left (all enabled vocabularies empty).
    """
    weights = {
        BLOCK_GENRES: params.genre_weight,
        BLOCK_TAGS: params.tag_weight,
        BLOCK_TITLE: params.title_weight,
        BLOCK_YEAR: params.year_weight,
    }
    source = {BLOCK_GENRES: col_genres, BLOCK_TAGS: col_tags, BLOCK_TITLE: col_title, BLOCK_YEAR: col_year}
    enabled = [b for b in BLOCKS if weights[b] > 0]
    if not enabled:
        raise ValueError("content: every block weight is 0, no features are left")
    require_columns(items, [col_item, col_item_idx, *(source[b] for b in enabled)], "items")

    prep: list[Transformer] = [
        SQLTransformer(
            statement=_prep_statement(
                enabled,
                col_genres=col_genres,
                col_tags=col_tags,
                col_title=col_title,
                col_year=col_year,
                bucket=params.year_bucket_years,
            )
        )
    ]
    if BLOCK_TITLE in enabled:
        prep += _title_stages()
    prepared = PipelineModel(stages=prep).transform(items).persist(StorageLevel.MEMORY_AND_DISK)
    fitted: list[Transformer] = []
    blocks: dict[str, tuple[int, int]] = {}
    vocabulary: dict[str, list[str]] = {}
    try:
        for name in enabled:
            stages, terms = _fit_block(name, prepared, params, _c(f"{name}_raw"))
            if not terms:
                log.warning("content block %r has an empty vocabulary and is left out", name)
                continue
            fitted += stages
            blocks[name] = (sum(size for _, size in blocks.values()), len(terms))
            vocabulary[name] = terms
    finally:
        prepared.unpersist()
    if not blocks:
        raise ValueError(f"content: every enabled block ({', '.join(enabled)}) has an empty vocabulary")

    weighting: list[Transformer] = []
    for name, (_, size) in blocks.items():
        weighting.append(Normalizer(p=2.0, inputCol=_c(f"{name}_raw"), outputCol=_c(f"{name}_unit")))
        weighting.append(
            ElementwiseProduct(
                scalingVec=Vectors.dense([math.sqrt(weights[name])] * size),
                inputCol=_c(f"{name}_unit"),
                outputCol=_c(f"{name}_weighted"),
            )
        )
    assemble = VectorAssembler(inputCols=[_c(f"{b}_weighted") for b in blocks], outputCol=_c("assembled"))
    final = Normalizer(p=2.0, inputCol=_c("assembled"), outputCol=col_features)
    model = PipelineModel(stages=[*prep, *fitted, *weighting, assemble, final])
    log.info(
        "content features: %s (dimension %d)",
        ", ".join(f"{b} {size} x w={weights[b]:g}" for b, (_, size) in blocks.items()),
        sum(size for _, size in blocks.values()),
    )
    features = transform_content(
        model, items, col_item=col_item, col_item_idx=col_item_idx, col_features=col_features
    )
    return ContentFeatures(model=model, features=features, blocks=blocks, vocabulary=vocabulary)


def transform_content(
    model: PipelineModel,
    items: DataFrame,
    *,
    col_item: str = COL_ITEM,
    col_item_idx: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
) -> DataFrame:
    """``(col_item, col_item_idx, col_features)`` for ``items`` with a fitted content model.

    ``items`` must use the column names the model was fitted with; terms and year buckets unseen at
    fit time contribute nothing (IDF and vocabularies are those of the fit). ``col_features`` must be
    the name given to :func:`fit_content_features`.
    """
    require_columns(items, [col_item, col_item_idx], "items")
    return model.transform(items).select(col_item, col_item_idx, col_features)
