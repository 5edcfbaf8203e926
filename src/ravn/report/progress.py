"""Progress display (rich) for long work: loops, and the search's live best-so-far line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=True)


@contextmanager
def search_progress(total: int, description: str = "search", enabled: bool = True):
    """Yields ``update(episode, best, extra)`` for :class:`ravn.search.log.Tracker`; a no-op when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[best]}"), transient=True) as bar:
        task = bar.add_task(description, total=total, best="")

        def update(evaluations: int, best: dict, _extra: dict) -> None:
            text = (f"best reward {best['reward']:.4f} | val top-1 {best['val_top1']:.2f}% | "
                    f"fidelity {best['fidelity']:.4f} | {best.get('avg_bits', 0):.3f} bits")
            bar.update(task, completed=evaluations, best=text)

        yield update
