"""Progress bars (rich) for long work; silent when output is not a terminal unless forced."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=True)
