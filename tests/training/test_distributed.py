"""Several processes: sharding arithmetic, the `--gpus` launcher, and real 2-process runs (gloo).

The multi-process tests start
`torchrun --nproc_per_node 2 -m tests.training.test_distributed train ...`: run as a module,
this file is the real CLI with `_RankProbe` added to `fit`, which writes what each rank saw
(its shards, the gathered prediction counts, a checksum of its final weights).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.data.core import TfmdDL
from fastai.learner import AvgMetric
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import AccumMetric, accuracy
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from pneumo_fastai.cli import app
from pneumo_fastai.cli.launch import check_gpus, gpus_launch_command, strip_option
from pneumo_fastai.errors import PneumoError
from pneumo_fastai.training.ddp import (
    GatheredLoss,
    ShardedDL,
    batchnorm_modules,
    exact_metric,
    padded_size,
    real_count,
    restore_batchnorm,
    shard,
)
from pneumo_fastai.training.run import resolve_sync_bn
from pneumo_fastai.training.sampling import train_labels

from ..helpers.data import make_dataset

REPO = Path(__file__).resolve().parents[2]
PROBE_DIR = "PNEUMO_TEST_PROBE_DIR"
SIZES = [(21, 2, 8), (24, 2, 8), (5, 4, 2), (50, 4, 12), (1, 3, 4), (17, 3, 5), (49, 2, 8)]


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and values."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---- sharding and padding arithmetic -------------------------------------------------------


@pytest.mark.parametrize(("n", "world", "bs"), SIZES)
def test_shards_are_equal_padded_and_gather_back_in_order(n, world, bs):
    idxs = list(range(100, 100 + n))
    shards = [shard(idxs, r, world, bs) for r in range(world)]
    assert {len(s) for s in shards} == {padded_size(n, world) // world}
    assert padded_size(n, world) - n < world
    steps = [[s[i : i + bs] for i in range(0, len(s), bs)] for s in shards]
    out, seen = [], 0
    for step in zip(*steps, strict=True):
        assert len({len(b) for b in step}) == 1, "every rank loads a batch of one size"
        seen += len(step[0])
        gathered = [i for b in step for i in b]  # what all_gather returns for this batch
        out += gathered[: real_count(len(gathered), seen, n, world)]
    assert out == idxs, "the padding is exactly what is dropped, and the order is kept"


class _LocalSharded(ShardedDL):
    """`ShardedDL` without a process group: every rank computes the same indices."""

    def _broadcast(self, t, rank):
        return t


@pytest.mark.parametrize(("n", "world", "bs"), SIZES)
def test_sharded_loader_gathers_each_item_once_in_dataset_order(n, world, bs):
    dl = TfmdDL(list(range(n)), bs=bs)
    ranks = [_LocalSharded(dl, rank=r, world_size=world) for r in range(world)]
    per_rank = [list(r) for r in ranks]
    assert {len(b) for b in per_rank} == {len(ranks[0])}, "__len__ is the real batch count"
    out = []
    for r, dl_r in enumerate(ranks):
        got = []
        for step, b in enumerate(dl_r):
            gathered = torch.cat([per_rank[q][step] for q in range(world)])
            dl_r._to_detach = lambda _b, cpu=True, gather=True, g=gathered: g
            got.append(dl_r.to_detach(b))
        if r == 0:
            out = torch.cat(got).tolist()
        assert torch.cat(got).tolist() == out, "every rank sees the same gathered values"
    assert out == list(range(n))
    assert ranks[0].last_idxs == list(range(n))


def test_batch_means_become_exact_gathered_metrics():
    preds = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
    targs = torch.tensor([0, 1, 1, 1, 0])
    metric = exact_metric(AvgMetric(accuracy))
    assert isinstance(metric, AccumMetric) and metric.name == "accuracy"
    metric.reset()
    metric.accum_values(preds[:3], targs[:3])
    metric.accum_values(preds[3:], targs[3:])
    assert float(metric.value) == pytest.approx(0.8)
    kept = AccumMetric(accuracy)
    assert exact_metric(kept) is kept

    loss = GatheredLoss()
    loss.reset()
    for sl in (slice(0, 3), slice(3, 5)):
        learn = SimpleNamespace(
            loss_func=CrossEntropyLossFlat(),
            pred=preds[sl],
            yb=(targs[sl],),
            to_detach=lambda b, cpu=True: b,
        )
        loss.accumulate(learn)
    expected = nn.functional.cross_entropy(preds, targs)
    assert float(loss.value) == pytest.approx(float(expected))


def test_sync_batchnorm_layers_are_put_back_after_fit():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    originals = batchnorm_modules(model)
    weight = model[1].weight
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(synced[1], nn.SyncBatchNorm)
    synced[1].running_mean.fill_(3.0)
    restored = restore_batchnorm(synced, originals)
    assert type(restored[1]) is nn.BatchNorm2d and type(restored[2][0]) is nn.BatchNorm1d
    assert restored[1] is originals["1"] and restored[1].weight is weight
    assert torch.equal(restored[1].running_mean, torch.full((4,), 3.0))


def test_sync_bn_is_off_on_cpu_and_refused_there():
    assert resolve_sync_bn(None, torch.device("cpu")) is False
    assert resolve_sync_bn(None, torch.device("cuda")) is True
    assert resolve_sync_bn(False, torch.device("cuda")) is False
    with pytest.raises(PneumoError, match="SyncBatchNorm"):
        resolve_sync_bn(True, torch.device("cpu"))


# ---- the --gpus launcher -------------------------------------------------------------------


def test_gpus_launch_command_passes_the_other_options_through():
    args = ["train", "--data", "d", "--gpus", "3", "--epochs=2", "--gpus=3", "--no-pretrained"]
    cmd = gpus_launch_command(3, args)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "3"
    script = cmd.index("pneumo_fastai.cli")
    assert cmd[script - 1] == "-m"
    assert cmd[script + 1 :] == ["train", "--data", "d", "--epochs=2", "--no-pretrained"]
    assert strip_option(["--gpus", "2", "--bs", "4"], "--gpus") == ["--bs", "4"]


def test_gpus_is_refused_under_a_launcher_and_with_a_cpu_device(monkeypatch):
    with pytest.raises(PneumoError, match="CUDA"):
        check_gpus(2, "cpu")
    with pytest.raises(PneumoError, match="at least 1"):
        check_gpus(0, "auto")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PneumoError, match="leave it out"):
        check_gpus(2, "auto")


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has 2 GPUs")
def test_gpus_without_enough_gpus_is_one_clear_error_before_launching(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: launched.append(cmd) or 0)
    result = CliRunner().invoke(
        app, ["train", "--data", str(tmp_path), "--no-pretrained", "--gpus", "2"]
    )
    assert isinstance(result.exception, PneumoError)  # `main` prints it and exits 2
    assert "--gpus 2 asks for 2 CUDA GPU(s), but this machine shows" in str(result.exception)
    assert launched == []


# ---- real runs: two processes on the CPU (gloo) --------------------------------------------


class _RankProbe(Callback):
    """Test only: writes this rank's shards, gathered counts and final weights' checksum."""

    order = 200  # after_fit: after SaveModelCallback restored the best epoch

    def before_fit(self) -> None:
        self.train_y = train_labels(self.dls)
        self.seen: dict[str, list] = {"train_labels": [], "valid_shards": [], "gathered": []}

    def after_train(self) -> None:
        self.seen["train_labels"] += [self.train_y[i] for i in self.dl.shard_idxs]

    def after_validate(self) -> None:
        accum = next(m for m in self.learn.metrics if isinstance(m, AccumMetric))
        self.seen["valid_shards"].append(self.dl.shard_idxs)
        self.seen["gathered"].append(sum(len(p) for p in accum.preds))
        self.seen["n_valid"] = self.dl.n

    def after_fit(self) -> None:
        state = self.learn.model.state_dict()
        record = {
            **self.seen,
            "checksum": state_checksum(state),
            "module_keys": [k for k in state if k.startswith("module.")],
            "model_types": sorted({type(m).__name__ for m in self.learn.model.modules()}),
            "train_type": type(self.dls.train).__name__,
        }
        path = Path(os.environ[PROBE_DIR]) / f"rank{dist.get_rank()}.json"
        path.write_text(json.dumps(record))


def _needs_launcher() -> None:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch")
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed beside this Python")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


TRAIN_ARGS = ["--no-pretrained", "--epochs", "2", "--size", "32", "--bs", "8", "--num-workers",
              "0", "--no-progress", "--split", "image", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """One 2-process training run on 70 images (23 NORMAL, 47 PNEUMONIA): 21 validate, 1 padded."""
    _needs_launcher()
    root = tmp_path_factory.mktemp("dist")
    data = make_dataset(root / "chest_xray", n_normal=23, n_pneumonia=47)
    exports, probes = root / "exports", root / "probes"
    probes.mkdir()
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2",
           "-m", "tests.training.test_distributed", "train", "--data", str(data),
           "--exports", str(exports), "--name", "ddp", *TRAIN_ARGS]  # fmt: skip
    env = _env(**{PROBE_DIR: str(probes)})
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((probes / f"rank{r}.json").read_text()) for r in range(2)]
    return SimpleNamespace(
        result=result, exports=exports, data=data, ranks=ranks, seconds=time.perf_counter() - start
    )


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_write_exactly_one_export_and_log_once(two_rank_run):
    names = sorted(p.name for p in two_rank_run.exports.iterdir())
    assert names == [
        "ddp.history.csv", "ddp.json", "ddp.ood.safetensors", "ddp.pkl", "ddp.safetensors",
        "ddp.valid.csv",
    ]  # fmt: skip
    out = two_rank_run.result.stdout
    assert out.count("Exported ") == 1 and out.count("Training on ") == 1
    card = json.loads((two_rank_run.exports / "ddp.json").read_text())
    assert card["training"]["distributed"] == {
        "world_size": 2, "backend": "gloo", "bs_per_process": 8, "effective_bs": 16,
        "sync_bn": False,
    }  # fmt: skip
    assert card["data"]["n_valid"] == 21


@pytest.mark.distributed
@pytest.mark.slow
def test_ranks_end_with_identical_unwrapped_weights_equal_to_the_export(two_rank_run):
    a, b = two_rank_run.ranks
    assert a["checksum"] == b["checksum"]
    assert a["module_keys"] == [] and "SyncBatchNorm" not in a["model_types"]
    assert a["train_type"] == b["train_type"] == "TfmdDL", "the plain train loader is back"
    exported = load_file(two_rank_run.exports / "ddp.safetensors")
    assert state_checksum(exported) == a["checksum"]


@pytest.mark.distributed
@pytest.mark.slow
def test_validation_is_covered_once_and_gathered_without_padding(two_rank_run):
    a, b = two_rank_run.ranks
    n = a["n_valid"]
    assert n == 21
    for shard_a, shard_b, gathered_a, gathered_b in zip(
        a["valid_shards"], b["valid_shards"], a["gathered"], b["gathered"], strict=True
    ):
        assert len(shard_a) == len(shard_b) == 11
        assert set(shard_a) | set(shard_b) == set(range(n))
        assert len(shard_a) + len(shard_b) - n == 1, "one padded duplicate, no more"
        assert gathered_a == gathered_b == n, "metrics see every item once"


@pytest.mark.distributed
@pytest.mark.slow
def test_balanced_draws_across_ranks_are_near_half_and_half(two_rank_run):
    a, b = two_rank_run.ranks
    drawn = a["train_labels"] + b["train_labels"]
    assert len(drawn) == 2 * 2 * 25  # 2 epochs x 2 ranks x 25 (49 train images, 1 padded)
    normal = drawn.count(0) / len(drawn)
    assert 0.38 < normal < 0.62, normal  # a third of the train split is NORMAL
    card = json.loads((two_rank_run.exports / "ddp.json").read_text())
    assert set(card["training"]["balanced_first_epoch_fractions"]) == {"NORMAL", "PNEUMONIA"}


@pytest.mark.distributed
@pytest.mark.slow
def test_export_of_a_distributed_run_predicts_like_a_single_process(two_rank_run):
    from fastai.learner import load_learner  # pneumo_fastai, imported above, registers transforms

    with open(two_rank_run.exports / "ddp.valid.csv") as f:
        rows = list(csv.DictReader(f))
    learn = load_learner(two_rank_run.exports / "ddp.pkl")
    files = [two_rank_run.data / r["file"] for r in rows]
    probs, _ = learn.get_preds(dl=learn.dls.test_dl(files, num_workers=0))
    recorded = torch.tensor([float(r["probability"]) for r in rows])
    assert torch.allclose(probs[:, 1], recorded, atol=1e-5), "gathered in dataset order"


@pytest.mark.distributed
@pytest.mark.slow
def test_bad_data_stops_every_rank_before_they_join(tmp_path):
    _needs_launcher()
    data = make_dataset(tmp_path / "chest_xray", n_normal=4, n_pneumonia=4)
    (data / "train" / "NORMAL" / "IM-0999-0001.jpeg").write_bytes(b"")
    exports = tmp_path / "exports"
    cmd = gpus_launch_command(2, ["train", "--data", str(data), "--exports", str(exports),
                                  "--gpus", "2", *TRAIN_ARGS])  # fmt: skip
    # a rank left waiting for the others would hang until the timeout, which fails the test
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode != 0
    assert result.stderr.count("IM-0999-0001.jpeg") >= 2, "each rank names the bad file"
    assert not exports.exists()


if __name__ == "__main__":
    import importlib

    from pneumo_fastai.cli import main

    train_module = importlib.import_module("pneumo_fastai.training.train")
    train_module.train = functools.partial(train_module.train, cbs=[_RankProbe()])
    main()
