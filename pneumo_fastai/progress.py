"""Progress for people: a bar on a terminal, two plain lines in a log.

    for item in track(files, len(files), "Decoding"):
        ...

Every long loop of the package reports through `track` (rich underneath); only fastai's own
training bar is fastprogress, and `train` shows it on a terminal alone. When the output is not a
terminal (`train ... > run.log`, CI), a bar would write one line per update: `track` writes the
start and the end instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def interactive(stderr: bool = False) -> bool:
    """Whether the output goes to a terminal a person watches (not a file, pipe or CI log)."""
    return Console(stderr=stderr).is_terminal


def track(
    items: Iterable[T],
    total: int,  # how many items `items` yields
    label: str,  # what is being done, e.g. "Decoding"
    enabled: bool = True,  # False: report nothing
    stderr: bool = False,  # report on stderr (commands whose stdout is data)
    transient: bool = True,  # remove the bar when done (terminal)
) -> Iterator[T]:
    """Yield `items` while showing progress: a bar on a terminal, else a start and an end line."""
    if not enabled or total == 0:
        yield from items
        return
    console = Console(stderr=stderr)
    if not console.is_terminal:
        out = sys.stderr if stderr else sys.stdout
        start = time.perf_counter()
        print(f"{label}: {total} ...", file=out, flush=True)
        yield from items
        print(f"{label}: {total} done in {time.perf_counter() - start:.1f} s", file=out, flush=True)
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)
