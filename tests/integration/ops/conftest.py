"""Fixtures of the ops tests: the CLI app's environment and in-process app (Redis mode)."""

from __future__ import annotations

from tests.integration.cli.conftest import app, env

__all__ = ["app", "env"]
