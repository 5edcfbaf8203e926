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


class EpochProgress:
    """A fine-tuning's live batch bar per epoch and one line per finished epoch (a training callback)."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.bar = None

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.started = time.perf_counter()
        self.bar = Progress(TextColumn(f"epoch {epoch}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True)
        self.task = self.bar.add_task("train", total=steps, info="")
        self.bar.start()

    def on_step(self, step: int, seen: int, sums: dict[str, float]) -> None:
        import time

        speed = seen / (time.perf_counter() - self.started)
        self.bar.update(self.task, completed=step, info=f"loss {sums['loss'] / seen:.4f} | {speed:.0f} img/s")

    def on_epoch_end(self, row: dict) -> None:
        from rich import print as rprint

        self.bar.stop()
        rprint(f"epoch {row['epoch']}/{self.epochs}: loss {row['train_loss']:.4f}, val top-1 {row['val_top1']:.2f}%, "
               f"val loss {row['val_loss']:.4f}, {row['step_seconds'] * 1000:.0f} ms/step")
