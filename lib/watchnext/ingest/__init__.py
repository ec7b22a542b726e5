"""Ingest: read sources into raw frames, validate them, index ids, write Delta tables."""
