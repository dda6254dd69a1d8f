"""The harness's processes as context managers: ``with`` starts one, leaving stops it."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

M = TypeVar("M", bound="Managed")


class Managed:
    """A process the harness starts and stops; subclasses give ``start`` and ``stop``."""

    def start(self: M) -> M:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: M) -> M:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
