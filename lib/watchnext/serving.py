"""The serving read path: a user's latest top-N from ``recommendations_latest``, without Spark.

The recommend stage writes one run date's lists to the Delta table ``recommendations_latest``, sorted by
``user_id`` so the Parquet statistics let a lookup skip what cannot hold the user: files by Delta's
per-file min/max, row groups by the footers, and pages by the Parquet page index (Spark writes one).
This module reads it with the ``deltalake`` package (no JVM, no Spark session)::

    store = RecommendationStore(cfg.table_path("recommendations_latest"))  # open once
    recs = store.for_user("42", n=10)  # milliseconds per lookup
    for r in recs.items:
        print(r.rank, r.title, r.score, r.reason)
    store.refresh()  # pick up the next run's commit

or in one call, ``recommendations_for(cfg, "42")``.

Engines: ``"datafusion"`` (the default) runs the lookup as SQL on deltalake's ``QueryBuilder``, which
prunes down to the pages that hold the user: a few ms on a 100k-user table whose files are one 250k-row
row group each (benchmarks/bench_serving.py). ``"pyarrow"`` filters a ``to_pyarrow_dataset()`` with
``pc.field("user_id") == id``; pyarrow prunes files and row groups but not pages, so it decodes whole
row groups (~20x slower on that table), and it cannot read deletion vectors or column mapping (such a
table falls back to DataFusion).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaProtocolError, TableNotFoundError

from watchnext.constants import (
    COL_EXPERIMENT,
    COL_ITEM,
    COL_MODEL_VERSIONS,
    COL_RANK,
    COL_REASON,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_SCORE,
    COL_SOURCES,
    COL_TITLE,
    COL_USER,
    COL_VARIANT,
    TABLE_RECOMMENDATIONS_LATEST,
)

if TYPE_CHECKING:
    from watchnext.config import Config

# Delta table properties the recommend stage sets (surfaced when present, never required).
PROP_RUN_DATE = "watchnext.run_date"
PROP_MLFLOW_RUN_ID = ("watchnext.mlflow_run_id", "watchnext.run_id")  # either spelling

_REQUIRED = (COL_USER, COL_RANK, COL_ITEM, COL_SCORE)
# Read when the table has them: a table written before a column existed (experiment and variant came with
# the A/B experiments, docs/experiments.md) still serves, those fields None.
_OPTIONAL = (
    COL_TITLE, COL_REASON, COL_SOURCES, COL_MODEL_VERSIONS, COL_RUN_ID, COL_RUN_DATE,
    COL_EXPERIMENT, COL_VARIANT,
)  # fmt: skip


class UnknownUserError(KeyError):
    """The table holds no recommendations for this user."""

    def __init__(self, user_id: str, path: str) -> None:
        super().__init__(user_id)
        self.user_id = user_id
        self.path = path

    def __str__(self) -> str:
        return f"no recommendations for user {self.user_id!r} in {self.path}"


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: str
    title: str | None
    score: float
    reason: str | None
    sources: tuple[str, ...] = ()
    model_versions: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def display_title(self) -> str:
        return self.title if self.title else self.item_id


@dataclass(frozen=True)
class UserRecommendations:
    user_id: str
    run_date: dt.date | None
    run_id: str | None
    items: list[Recommendation] = field(hash=False)
    table_version: int | None = None  # the Delta version read
    mlflow_run_id: str | None = None  # the table property, when the stage set it
    # The user's A/B experiment and the variant whose list this is; None outside any experiment (or in a
    # table written before experiments existed).
    experiment: str | None = None
    variant: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping (dates as ISO strings)."""
        out = dataclasses.asdict(self)
        out["run_date"] = self.run_date.isoformat() if self.run_date else None
        for item in out["items"]:
            item["sources"] = list(item["sources"])
            item["model_versions"] = dict(item["model_versions"])
        return out


def table_uri(path: str) -> str:
    """A location ``deltalake`` accepts: ``file:`` URIs become plain paths, local paths absolute."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif path.startswith("file:"):
        path = path[len("file:") :]
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


Engine = Literal["datafusion", "pyarrow"]


class _Snapshot(NamedTuple):
    """One table version as read: a DataFusion query over it, or a pyarrow dataset."""

    version: int
    dataset: ds.Dataset | None
    query: QueryBuilder | None
    columns: list[str]
    schema: pa.Schema  # of ``columns``, as pyarrow reads them
    properties: dict[str, str]


class RecommendationStore:
    """Reads ``recommendations_latest`` by user; open once, look up many times.

    The Delta log is read once at construction (and on :meth:`refresh`), so a lookup reads only the
    Parquet that can hold the user (see the module doc for the engines). Lookups see the version read
    until :meth:`refresh`. Thread-safe: lookups may run concurrently with each other and with a refresh.
    """

    def __init__(
        self,
        path: str,
        storage_options: Mapping[str, str] | None = None,
        engine: Engine = "datafusion",
    ) -> None:
        if engine not in ("datafusion", "pyarrow"):
            raise ValueError(f"engine must be 'datafusion' or 'pyarrow', got {engine!r}")
        self.path = path
        self.uri = table_uri(path)
        self.storage_options = dict(storage_options) if storage_options else None
        self.engine = engine
        self._lock = threading.Lock()
        self._table = self._open()
        self._load(self._table)

    def _open(self) -> DeltaTable:
        try:
            return DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            raise FileNotFoundError(
                f"no recommendations table at {self.path}: run the recommend stage first "
                "(watchnext recommend, or watchnext run)"
            ) from None

    def _load(self, table: DeltaTable) -> None:
        schema = pa.schema(table.schema().to_arrow())
        missing = [c for c in _REQUIRED if c not in schema.names]
        if missing:
            raise ValueError(f"{self.path} is not a recommendations table: no column(s) {missing}")
        columns = [c for c in (*_REQUIRED, *_OPTIONAL) if c in schema.names]
        read_schema = pa.schema([schema.field(c) for c in columns])
        dataset: ds.Dataset | None = None
        if self.engine == "pyarrow":
            try:
                dataset = table.to_pyarrow_dataset()
            except DeltaProtocolError:  # deletion vectors, column mapping: DataFusion reads those
                dataset = None
        query = None if dataset is not None else QueryBuilder().register("recs", table)
        properties = dict(table.metadata().configuration or {})
        # One attribute swap, so a concurrent lookup never mixes two versions.
        self._snapshot = _Snapshot(table.version(), dataset, query, columns, read_schema, properties)

    def refresh(self) -> bool:
        """Reload the table at its newest version; True when the version changed."""
        with self._lock:
            before = self._snapshot.version
            table = self._open()  # a fresh log read: the table may have been replaced or vacuumed
            self._load(table)
            self._table = table
            return self._snapshot.version != before

    @property
    def version(self) -> int:
        return self._snapshot.version

    @property
    def properties(self) -> dict[str, str]:
        """The Delta table properties (``watchnext.run_date``, ``watchnext.run_id``, ...)."""
        return dict(self._snapshot.properties)

    def _rows(self, user_id: str) -> tuple[int, pa.Table, dict[str, str]]:
        snap = self._snapshot
        if snap.dataset is not None:
            rows = snap.dataset.to_table(columns=snap.columns, filter=pc.field(COL_USER) == user_id)
        else:
            assert snap.query is not None
            literal = "'" + user_id.replace("'", "''") + "'"
            cols = ", ".join(f'"{c}"' for c in snap.columns)
            reader = snap.query.execute(f'SELECT {cols} FROM recs WHERE "{COL_USER}" = {literal}')
            # arro3 -> pyarrow through the C stream; DataFusion's string views back to plain strings.
            rows = pa.RecordBatchReader.from_stream(reader).read_all().cast(snap.schema)
        return snap.version, rows, snap.properties

    @property
    def active_engine(self) -> Engine:
        """The engine lookups use now (``pyarrow`` falls back to DataFusion for what it can't read)."""
        return "pyarrow" if self._snapshot.dataset is not None else "datafusion"

    def for_user(self, user_id: str | int, n: int | None = None) -> UserRecommendations:
        """The user's list, best first (at most ``n`` items); :class:`UnknownUserError` if none."""
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        user_id = str(user_id)
        version, rows, properties = self._rows(user_id)
        if rows.num_rows == 0:
            raise UnknownUserError(user_id, self.path)
        rows = rows.sort_by(COL_RANK)
        if n is not None:
            rows = rows.slice(0, n)
        data = rows.to_pydict()
        count = rows.num_rows

        def col(name: str) -> list[Any]:
            return data.get(name) or [None] * count

        items = [
            Recommendation(
                rank=int(rank),
                item_id=str(item),
                title=title,
                score=float(score),
                reason=reason,
                sources=tuple(sources or ()),
                model_versions=dict(mv or ()),  # a Parquet map arrives as [(key, value), ...]
            )
            for rank, item, title, score, reason, sources, mv in zip(
                data[COL_RANK],
                data[COL_ITEM],
                col(COL_TITLE),
                data[COL_SCORE],
                col(COL_REASON),
                col(COL_SOURCES),
                col(COL_MODEL_VERSIONS),
                strict=True,
            )
        ]
        run_date = col(COL_RUN_DATE)[0]
        if run_date is None and properties.get(PROP_RUN_DATE):
            run_date = dt.date.fromisoformat(properties[PROP_RUN_DATE])
        return UserRecommendations(
            user_id=user_id,
            run_date=run_date,
            run_id=col(COL_RUN_ID)[0],
            items=items,
            table_version=version,
            mlflow_run_id=next((properties[k] for k in PROP_MLFLOW_RUN_ID if properties.get(k)), None),
            experiment=col(COL_EXPERIMENT)[0],
            variant=col(COL_VARIANT)[0],
        )


def recommendations_for(
    cfg_or_path: Config | str | os.PathLike[str],
    user_id: str | int,
    n: int | None = None,
    storage_options: Mapping[str, str] | None = None,
    engine: Engine = "datafusion",
) -> UserRecommendations:
    """One lookup: open the table (a :class:`Config`'s ``recommendations_latest``, or a path) and read.

    Opening reads the Delta log; to look up many users, keep a :class:`RecommendationStore`.
    """
    path = (
        cfg_or_path
        if isinstance(cfg_or_path, str | os.PathLike)
        else cfg_or_path.table_path(TABLE_RECOMMENDATIONS_LATEST)
    )
    return RecommendationStore(os.fspath(path), storage_options, engine).for_user(user_id, n)
