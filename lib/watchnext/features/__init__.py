"""Item features: content vectors from genres, tags, title words and release year (pure transforms)."""

from __future__ import annotations

from watchnext.features.content import (
    BLOCKS,
    ContentFeatures,
    fit_content_features,
    transform_content,
)

__all__ = ["BLOCKS", "ContentFeatures", "fit_content_features", "transform_content"]
