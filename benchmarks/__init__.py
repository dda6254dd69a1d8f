"""Benchmarks of cascade-celery against plain Celery and the usual Redis-semaphore pattern.

Run with ``python -m benchmarks`` (``--help`` for options); never part of the test suite.
"""
