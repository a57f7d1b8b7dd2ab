"""Fixtures: tiny datasets in temp folders, the real X-rays, and the one training factory.

An export a test reads comes from `trained(config)`, which trains each distinct config once per
session, starting from `tiny_config`, the shrunk reference config. A test whose fixtures use
`trained` is marked `slow` at collection, and one using `real_subset` `shared_data`. A test that
fits a model itself (an interrupted run, a callback during a fit) carries `slow` in its module;
the training guard (tests/helpers/runs.py) fails any test that trains without it. Shared helpers
live in tests/helpers/; this file holds fixtures and hooks only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers.data import (
    copy_real,
    make_dataset,
    make_evaluation_dataset,
)
from .helpers.runs import RunFactory, TrainingGuard
from .helpers.system import one_torch_thread

GUARD = TrainingGuard()


def pytest_configure(config: pytest.Config) -> None:
    """Wrap fastai's fit for the session: trainings are counted and checked against `slow`."""
    GUARD.install()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what the fixtures imply, before `-m` selects: `trained` is slow, real data shared."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "trained" in names:
            item.add_marker(pytest.mark.slow)
        if "real_subset" in names:
            item.add_marker(pytest.mark.shared_data)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """The guard knows which test runs (fixtures set up on its behalf included)."""
    with GUARD.running(item):
        return (yield)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for line in GUARD.summary(verbose=config.get_verbosity() > 0):
        terminalreporter.write_line(line)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A synthetic dataset of 36 images (12 NORMAL, 24 PNEUMONIA) in a temp folder."""
    return make_dataset(tmp_path / "chest_xray")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dataset` once per session, for training; read-only."""
    return make_dataset(tmp_path_factory.mktemp("tiny") / "chest_xray")


@pytest.fixture(scope="session")
def evaluation_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training images whose PNEUMONIA carry a bright patch, and a test split with bad files
    (tests/helpers/data.py); read-only."""
    return make_evaluation_dataset(tmp_path_factory.mktemp("evaluation") / "ds")


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real NORMAL and 40 real PNEUMONIA X-rays copied into a temp dataset folder."""
    root = tmp_path_factory.mktemp("real") / "chest_xray"
    return copy_real(root, {"NORMAL": 20, "PNEUMONIA": 40})


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """`one_torch_thread` for a whole test module (`pytest.mark.usefixtures`)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_config(tiny_data: Path):
    """The shrunk reference config the training tests `.replace(...)`: the tiny dataset, 64 px,
    1 epoch, batch 8, no workers, from scratch, the reference seed, on the CPU in fp32 and NCHW
    (set, not probed: the probe costs seconds and its timing-based choice would change the
    model from run to run)."""
    from pneumo_fastai.config import TrainConfig

    return TrainConfig(
        data=tiny_data, size=64, epochs=1, bs=8, num_workers=0, pretrained=False, seed=42,
        device="cpu", precision="fp32", channels_last=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> RunFactory:
    """`trained(config) -> Run`: each distinct config trained once per session, in its own
    folder (the config's `exports` is replaced); shared across modules, so read-only."""
    return RunFactory(lambda: tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def real_config(tiny_config, real_subset: Path):
    """`tiny_config` on the 60 real X-rays (seed 1: the OOD and adapt checks were tuned on it)."""
    return tiny_config.replace(data=real_subset, seed=1)


@pytest.fixture(scope="session")
def real_export(trained: RunFactory, real_config) -> Path:
    """Card of the 1-epoch, 64 px export from scratch on the 60 real X-rays."""
    return trained(real_config).card


@pytest.fixture(scope="session")
def ensemble_config(real_config):
    """A 2-fold ensemble of `real_config` members (named ens, ens-fold0 and ens-fold1)."""
    return real_config.replace(seed=5, name="ens", folds=2)


@pytest.fixture(scope="session")
def tiny_export(trained: RunFactory, tiny_config, evaluation_data: Path) -> Path:
    """Card of the binary export named `tiny`, trained on the evaluation dataset."""
    return trained(tiny_config.replace(data=evaluation_data, name="tiny")).card


@pytest.fixture(scope="session")
def subtype_export(trained: RunFactory, tiny_config) -> Path:
    """Card of the NORMAL / BACTERIA / VIRUS export trained on the tiny dataset (seed 3: the web
    demo's Grad-CAM check compares maps of this model)."""
    return trained(tiny_config.replace(task="subtype", seed=3)).card
