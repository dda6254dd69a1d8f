"""A small shop whose tasks call a fragile partner API, gated by cascade-celery.

``python -m example_project.demo`` runs it end to end; see example_project/README.md.
"""
