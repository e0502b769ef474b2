"""rich progress bars on stderr for steps that take more than a few seconds (no-op when disabled)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def make_progress(
    *,
    label: str = "[bold]{task.description}",
    extra: tuple = (),
    transient: bool = False,
    disable: bool = False,
):
    """The one rich ``Progress`` builder (on stderr, so stdout stays the command's output):
    ``label``, a bar, ``extra`` columns (default: done/total and elapsed time)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = extra or (MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(
        TextColumn(label),
        BarColumn(),
        *columns,
        console=Console(stderr=True),
        transient=transient,
        disable=disable,
    )


def _progress():
    return make_progress()


def track(
    items: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    """Iterate with a progress bar when ``enabled``."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, *, completed: float | None = None, description: str | None = None) -> None:
        if self._progress is not None:
            kwargs = {
                k: v for k, v in (("completed", completed), ("description", description)) if v is not None
            }
            self._progress.update(self._task, **kwargs)


@contextmanager
def bar(description: str, total: float | None, *, enabled: bool = True) -> Iterator[_Bar]:
    """A manually advanced bar: ``with bar("benchmark", 10) as b: b.advance()``."""
    if not enabled:
        yield _Bar(None, None)
        return
    with _progress() as progress:
        yield _Bar(progress, progress.add_task(description, total=total))


def layer_progress(show: bool, total: int, verb: str = "pruning"):
    """A (progress, task) pair for a pass over layers, labelled ``verb`` + the current layer."""
    progress = make_progress(label=f"[bold]{verb}[/bold] {{task.description}}", disable=not show)
    return progress, progress.add_task("", total=total)
