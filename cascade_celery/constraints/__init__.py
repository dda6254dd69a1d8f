"""Constraints: the value objects, the handlers and the manager that applies them."""
