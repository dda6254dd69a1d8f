"""Optional constraint handlers that ship with cascade-celery (register them explicitly)."""
