"""Prometheus metrics of cascade's pools and constraints, read from Redis at scrape time.

``collector.py`` reads the gauges (what Redis holds now) and ``stats.py`` the counters and
histograms the Lua scripts keep (what happened); ``celery cascade exporter`` serves them.
"""

from __future__ import annotations

from cascade_celery.exporter.collector import MAX_POOLS, OTHER, CascadeCollector, Reading

__all__ = ["MAX_POOLS", "OTHER", "CascadeCollector", "Reading"]
