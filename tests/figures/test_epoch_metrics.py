"""Epoch metrics: their values, their pickles, the names old exports use, and a fresh reload."""

import json
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastai.metrics import AccumMetric
from sklearn.metrics import roc_auc_score

from pneumo_fastai.figures import epoch_metrics
from pneumo_fastai.figures.epoch_metrics import (
    balanced_accuracy,
    collapsed,
    f1_pneumonia,
    macro_auc,
    recall_normal,
    recall_pneumonia,
    roc_auc,
)
from pneumo_fastai.model import learner_metrics

SCHEMA1_PKL = Path(__file__).parents[1] / "fixtures" / "schema1" / "schema1_tiny.pkl"
# NORMAL, BACTERIA, VIRUS: 3 NORMAL (one called VIRUS), 3 BACTERIA (one called NORMAL), 2 VIRUS
Y3 = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PRED3 = np.array([0, 0, 2, 1, 2, 0, 2, 1])
PROBS3 = np.array(
    [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.2, 0.5], [0.2, 0.7, 0.1],
     [0.1, 0.4, 0.5], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.4, 0.5, 0.1]]
)  # fmt: skip


def test_binary_metrics_against_hand_counts():
    y, pred = np.array([0, 0, 0, 1, 1, 1, 1]), np.array([0, 1, 1, 1, 1, 1, 0])
    assert recall_normal(y, pred) == pytest.approx(1 / 3)
    assert recall_pneumonia(y, pred) == pytest.approx(3 / 4)
    assert f1_pneumonia(y, pred) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert balanced_accuracy(y, pred) == pytest.approx((1 / 3 + 3 / 4) / 2)
    assert roc_auc(y, np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.3])) == pytest.approx(8 / 12)


def test_undefined_values_are_nan_or_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.9])))
        assert recall_normal(np.array([1, 1]), np.array([1, 0])) == 0
        assert f1_pneumonia(np.array([0, 0]), np.array([0, 0])) == 0
        assert math.isnan(macro_auc(np.array([0, 1, 1]), PROBS3[:3]))


def test_collapsed_scores_normal_against_every_other_class():
    # as NORMAL vs PNEUMONIA: truth 0 0 0 1 1 1 1 1, predicted 0 0 1 1 1 0 1 1
    assert collapsed(recall_normal)(Y3, PRED3) == pytest.approx(2 / 3)
    assert collapsed(recall_pneumonia)(Y3, PRED3) == pytest.approx(4 / 5)
    assert collapsed(f1_pneumonia)(Y3, PRED3) == pytest.approx(8 / 10)
    # P(PNEUMONIA) = 1 - P(NORMAL): NORMAL .2 .4 .7 and PNEUMONIA .8 .9 .5 .9 .6; 13 of 15 pairs
    assert collapsed(roc_auc)(Y3, PROBS3) == pytest.approx(13 / 15)
    assert macro_auc(Y3, PROBS3) == pytest.approx(
        roc_auc_score(Y3, PROBS3, multi_class="ovr", average="macro")
    )
    assert repr(collapsed(roc_auc)) == "collapsed(roc_auc)"


@pytest.mark.parametrize(
    ("n_classes", "names"),
    [
        (2, ["accuracy", "recall_normal", "recall_pneumonia", "f1", "roc_auc"]),
        (3, ["accuracy", "balanced_accuracy", "recall_normal", "recall_pneumonia", "f1",
             "roc_auc", "macro_auc"]),
    ],
)  # fmt: skip
def test_learner_metrics_and_their_names(n_classes, names):
    metrics = learner_metrics(n_classes)
    assert [getattr(m, "name", getattr(m, "__name__", None)) for m in metrics] == names


def test_every_metric_pickles_by_reference_to_this_module():
    for metric in learner_metrics(3)[1:]:
        data = pickle.dumps(metric)
        assert b"pneumo_fastai.figures.epoch_metrics" in data
        assert b"pneumo_fastai.model" not in data and b"pneumo_fastai.evaluation" not in data
        copy = pickle.loads(data)
        inner = getattr(copy.func, "func", copy.func)
        assert inner is getattr(epoch_metrics, inner.__name__)
        outputs = PRED3 if metric.flatten else PROBS3  # class probabilities are not flattened
        assert copy.func(Y3, outputs) == metric.func(Y3, outputs)


def _global(module: str, name: str):
    """What a pickle that names `module.name` (as an old export does) loads."""
    return pickle.loads(f"c{module}\n{name}\n.".encode())


def test_the_names_old_exports_use_resolve_to_the_moved_metrics():
    for name in ("recall_normal", "recall_pneumonia", "f1_pneumonia", "roc_auc"):
        binary = getattr(epoch_metrics, name)
        assert _global("pneumo_fastai.model", f"_{name}") is binary
        subtype = _global("pneumo_fastai.model", f"_subtype_{name}")
        assert isinstance(subtype, collapsed) and subtype.func is binary
    assert _global("pneumo_fastai.model", "_balanced_accuracy") is balanced_accuracy
    assert _global("pneumo_fastai.model", "_macro_auc") is macro_auc
    # what the three-class functions of 0.2 computed
    old_roc = roc_auc_score((Y3 != 0).astype(int), 1 - PROBS3[:, 0])
    assert _global("pneumo_fastai.model", "_subtype_roc_auc")(Y3, PROBS3) == pytest.approx(old_roc)
    with pytest.raises(AttributeError, match="_collapsed"):
        _global("pneumo_fastai.model", "_collapsed")  # a helper, never pickled


def test_the_names_exports_pickled_in_evaluation_resolve_to_the_moved_metrics():
    for name in ("recall_normal", "recall_pneumonia", "f1_pneumonia", "roc_auc",
                 "balanced_accuracy", "macro_auc", "collapsed"):  # fmt: skip
        moved = getattr(epoch_metrics, name)
        assert _global("pneumo_fastai.evaluation.epoch_metrics", name) is moved


def test_the_0_1_0_pickle_holds_the_moved_metrics():
    from fastai.learner import load_learner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn = load_learner(SCHEMA1_PKL)
    funcs = [m.func for m in learn.metrics if isinstance(m, AccumMetric)]
    assert funcs == [recall_normal, recall_pneumonia, f1_pneumonia, roc_auc]


RELOAD = """
import json, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from fastai.learner import load_learner
for pkl, folder in zip(sys.argv[1::2], sys.argv[2::2]):
    learn = load_learner(pkl)
    files = sorted(p for p in Path(folder).rglob("*.jpeg"))
    loss, *values = learn.validate(dl=learn.dls.test_dl(files, with_labels=True))
    print(json.dumps(dict(zip([m.name for m in learn.metrics], values))))
"""


def test_fresh_exports_reload_and_compute_their_metrics_in_a_fresh_process(
    tiny_export, subtype_export, evaluation_data, tiny_data, tmp_path
):
    """A binary and a three-class export, in one fresh interpreter, on their training images."""
    exports = {2: (tiny_export, evaluation_data / "train"), 3: (subtype_export, tiny_data)}
    args = [str(a) for card, data in exports.values() for a in (card.with_suffix(".pkl"), data)]
    out = subprocess.run(
        [sys.executable, "-c", RELOAD, *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for n_classes, line in zip(exports, out.stdout.splitlines()[-2:], strict=True):
        values = json.loads(line)
        expected = learner_metrics(n_classes)
        assert list(values) == [getattr(m, "name", "accuracy") for m in expected]
        assert all(0 <= v <= 1 for v in values.values()), values  # every class present: no nan
