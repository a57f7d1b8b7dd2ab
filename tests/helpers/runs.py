"""Training in the tests: the cached run factory behind the `trained` fixture, and the guard that
keeps training out of the tests not marked `slow`.

A config is trained once per session, whichever module asks first; the others get the same `Run`.
Treat its files as read-only: a test that changes an export works on a copy.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .system import one_torch_thread

if TYPE_CHECKING:
    from pneumo_fastai.config import TrainConfig


@dataclass(frozen=True)
class Run:
    """One run of the factory: the config as trained, what training returned, what it logged."""

    config: TrainConfig  # with the factory's `exports` folder
    result: Any  # TrainResult, or EnsembleResult for a --folds or --seeds config
    messages: tuple[str, ...]  # what training logged, in order

    @property
    def card(self) -> Path:
        """The export's model card, EXPORTS/NAME.json."""
        paths = getattr(self.result, "paths", None)
        return self.result.card_path if paths is None else paths.card


def run_key(config: TrainConfig) -> str:
    """What makes two configs one run: every field but the exports folder."""
    return json.dumps({**config.to_dict(), "exports": None}, sort_keys=True, default=str)


class RunFactory:
    """`factory(config) -> Run`: trains each distinct config once, exported into a new folder."""

    def __init__(self, new_folder: Callable[[], Path]):
        self._new_folder = new_folder
        self._runs: dict[str, Run] = {}

    def __call__(self, config: TrainConfig) -> Run:
        key = run_key(config)
        if key not in self._runs:
            self._runs[key] = self._train(config.replace(exports=self._new_folder()))
        return self._runs[key]

    @staticmethod
    def _train(config: TrainConfig) -> Run:
        from pneumo_fastai.training.ensemble import train_ensemble
        from pneumo_fastai.training.train import train

        messages: list[str] = []
        fit = train_ensemble if config.folds or config.seeds else train
        with one_torch_thread():
            result = fit(config, progress=False, log=messages.append)
        return Run(config, result, tuple(messages))


class TrainingGuard:
    """Counts the fits that take a training step, and fails a test not marked `slow` whose fit is
    about to take one (through `train`, `train_ensemble`, a fixture or `Learner.fit` itself).

    It wraps fastai's `Learner.fit` and `Learner._do_one_batch` for the whole session; a fit that
    is cancelled before its first step (to look at a batch) is no training. Training in another
    process (the CLI in a subprocess, torchrun, a notebook kernel) is not seen: mark such tests by
    hand.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # node id -> fits that took a training step
        self._test: tuple[str, bool] | None = None  # (node id, marked slow) of the running test
        self._fitting: set[int] = set()  # learners in a fit that has taken no step yet

    def install(self) -> None:
        from fastai.learner import Learner

        fit, one_batch = Learner.fit, Learner._do_one_batch
        guard = self

        @functools.wraps(fit)
        def counted_fit(learn, *args, **kwargs):
            guard._fitting.add(id(learn))
            try:
                return fit(learn, *args, **kwargs)
            finally:
                guard._fitting.discard(id(learn))

        @functools.wraps(one_batch)
        def guarded_batch(learn):
            if getattr(learn, "training", False) and id(learn) in guard._fitting:
                guard._fitting.discard(id(learn))
                guard._first_step()
            return one_batch(learn)

        Learner.fit, Learner._do_one_batch = counted_fit, guarded_batch

    def _first_step(self) -> None:
        if self._test is None:
            return
        node, slow = self._test
        self.counts[node] += 1
        if not slow:
            pytest.fail(
                f"{node} trains a model but is not marked slow: add `@pytest.mark.slow` (or the "
                "module's `pytestmark`), so that `-m 'not slow'` trains nothing.",
                pytrace=False,
            )

    @contextmanager
    def running(self, item: pytest.Item) -> Iterator[None]:
        """While `item` runs (setup, call, teardown), its fits are counted and checked."""
        self._test = (item.nodeid, item.get_closest_marker("slow") is not None)
        try:
            yield
        finally:
            self._test = None

    def summary(self, verbose: bool) -> list[str]:
        """A line with the number of trainings, and one per test when `verbose`."""
        lines = [f"model trainings in this process: {sum(self.counts.values())}"]
        if verbose:
            lines += [f"  {n}  {node}" for node, n in sorted(self.counts.items())]
        return lines
