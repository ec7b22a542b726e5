"""Storage locations: resolved once, when the config is validated, so no layer below sees a relative path.

Spark's path-based SQL identifiers (``delta.`./lakehouse/t```, ``ALTER TABLE``, ``writeTo``) do not
resolve a relative path the way ``DataFrameReader.load`` does, and a relative path means something else
in every process whose working directory differs (spark-submit on a cluster, Airflow tasks, Horovod
ranks). So the config turns every location into an absolute one where it is loaded:

- :func:`resolve_uri` for locations Spark, Delta or MLflow open (the lakehouse, checkpoints, report
  folder, input files): a local path becomes ``file:///abs/path``; a URI with a scheme (``s3a://``,
  ``abfss://``, ``hdfs://``, ``dbfs:``, ``gs://``) stays as it is.
- :func:`resolve_path` for folders only this machine's Python uses (download cache, Spark's scratch
  dirs): an absolute local path.
- :func:`resolve_sqlite_uri` for an MLflow ``sqlite:///`` store.

``file:`` URIs are written without percent-encoding: Hadoop's ``Path`` does not decode escapes, so
``file:///tmp/my%20dir`` would name a folder called ``my%20dir``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
FILE_SCHEME = "file://"
SQLITE_PREFIX = "sqlite:///"


def _absolute(path: str, base: str | os.PathLike[str] | None) -> str:
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        p = Path(base if base is not None else os.getcwd()) / p
    # normpath, not resolve(): symlinked folders stay as the user named them.
    return os.path.normpath(str(p))


def scheme(location: str) -> str | None:
    """The URI scheme of ``location`` (``"s3a"``, ``"file"``), or None for a plain path."""
    m = _SCHEME.match(location)
    return m.group(1).lower() if m else None


def resolve_uri(location: str, base: str | os.PathLike[str] | None = None) -> str:
    """An absolute URI for ``location``: ``file:///abs`` for a local path (relative to ``base``, default
    the working directory) or a ``file:`` URI; any other URI unchanged."""
    if not location or not location.strip():
        raise ValueError("a storage location must not be empty")
    s = scheme(location)
    if s is None:
        return FILE_SCHEME + _absolute(location, base)
    local = local_path(location) if s == "file" else None
    if local is None:
        return location  # s3a://, abfss://, hdfs://, dbfs:, file://remote-host/...: left to Hadoop
    return FILE_SCHEME + _absolute(str(local), base)


def resolve_path(location: str, base: str | os.PathLike[str] | None = None) -> str:
    """An absolute local path for ``location`` (a path or a ``file:`` URI); other URIs are refused."""
    local = local_path(resolve_uri(location, base))
    if local is None:
        raise ValueError(f"must be a local folder or file, got the URI {location!r}")
    return str(local)


def resolve_sqlite_uri(uri: str, base: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///relative.db`` made ``sqlite:////abs/relative.db``; other tracking URIs unchanged
    (a plain local path, MLflow's file store, becomes a ``file://`` URI)."""
    if uri.startswith(SQLITE_PREFIX):
        db = uri[len(SQLITE_PREFIX) :]
        if db == ":memory:" or not db:
            return uri
        return SQLITE_PREFIX + _absolute(db, base)
    if scheme(uri) is None and uri not in ("databricks", "databricks-uc"):  # MLflow's named stores
        return resolve_uri(uri, base)
    return uri


def local_path(location: str) -> Path | None:
    """The local path of a ``file:`` URI or a plain path; None for any other URI (s3a://, ...)."""
    s = scheme(location)
    if s is None:
        return Path(location)
    if s != "file":
        return None
    rest = location[len("file:") :]
    if rest.startswith("//"):
        host, _, tail = rest[2:].partition("/")
        if host not in ("", "localhost"):
            return None
        return Path("/" + tail)
    return Path(rest)


def is_local(location: str) -> bool:
    return local_path(location) is not None
