"""One full evaluation of the tiny export, shared by the evaluation tests (`done` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

N_BOOT = 1000  # bootstrap resamples of the session's evaluation


@dataclass
class Done:
    """One full evaluation of the tiny export with TTA and a re-chosen threshold."""

    card: Path
    data: Path  # dataset root
    ev: object  # Evaluation
    plots: dict[str, Path]
    files: object  # ReportFiles


def full_evaluation(card: Path, data: Path, out: Path) -> Done:
    """Evaluate `card` on `data`'s test split, draw every plot and write the report in `out`."""
    from pneumo_fastai.evaluation.evaluate import evaluate
    from pneumo_fastai.evaluation.plots import PLOTS, draw_all
    from pneumo_fastai.evaluation.report import write_report

    ev = evaluate(card, data, tta=True, target_sensitivity=0.9, n_boot=N_BOOT, num_workers=0, bs=16)
    plots = draw_all(ev.run, out / PLOTS, n_top=4, n_correct=4)
    return Done(card, data, ev, plots, write_report(ev, plots, out))
