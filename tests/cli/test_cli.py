"""The command line as a user meets it: help, errors without tracebacks, environment variables."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pneumo_fastai.cli import app

from ..helpers.cli import run_main

runner = CliRunner()


def test_help_lists_train():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "train" in result.output


def test_train_help_explains_the_options():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "240"})
    out = result.output
    for option in ("--data", "--epochs", "--patience", "--split", "--no-pretrained", "--weights",
                   "--valid-pct", "--seed", "--name", "--exports", "PNEUMO_DATA"):  # fmt: skip
        assert option in out, option
    words = " ".join(out.replace("│", " ").split())
    assert "freezing random layers would make no sense" in words


def _run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pneumo_fastai.cli", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_missing_dataset_is_one_clear_message_and_exit_2(tmp_path, monkeypatch, capsys):
    code = run_main(monkeypatch, "train", "--data", tmp_path / "nowhere", "--no-pretrained")
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_invalid_option_value_exits_2_without_traceback(dataset):
    result = _run_cli("train", "--data", str(dataset), "--split", "random", "--no-pretrained")
    assert result.returncode == 2
    assert "split" in result.stderr and "Traceback" not in result.stderr


def test_data_path_comes_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PNEUMO_DATA", str(tmp_path / "from_env"))
    assert run_main(monkeypatch, "train", "--no-pretrained") == 2
    assert "from_env" in capsys.readouterr().err


def test_weights_with_no_pretrained_is_refused(dataset, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    result = runner.invoke(
        app, ["train", "--data", str(dataset), "--no-pretrained", "--weights", str(weights)]
    )
    assert result.exit_code != 0


HEAVY = ("torch", "fastai", "accelerate", "torchvision")
COMMANDS = [
    [], ["train"], ["predict"], ["evaluate"], ["interpret"],
    ["data"], ["data", "download"], ["data", "check"], ["data", "prepare"], ["data", "holdout"],
]  # fmt: skip


def test_help_of_every_command_imports_no_heavy_library():
    script = (
        "import sys, json\n"
        "from pneumo_fastai.cli import app\n"
        "from typer.testing import CliRunner\n"
        "runner, out = CliRunner(), {}\n"
        f"for cmd in {COMMANDS!r}:\n"
        "    result = runner.invoke(app, [*cmd, '--help'])\n"
        "    out[' '.join(cmd)] = (result.exit_code, 'Usage' in result.output)\n"
        f"print(json.dumps({{'help': out, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    assert all(code == 0 and usage for code, usage in report["help"].values()), report["help"]


def test_every_train_option_comes_from_the_config_with_its_help_text():
    from pneumo_fastai.cli.options import field_help
    from pneumo_fastai.config import TrainConfig

    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    words = " ".join(result.output.replace("│", " ").split())
    for name, help_text in field_help().items():
        if name == "extra":
            continue
        assert f"--{name.replace('_', '-')}" in words, name
        assert help_text in words, name
    assert set(field_help()) == {f for f in TrainConfig.__dataclass_fields__}


def test_python_m_pneumo_fastai_cli_is_the_same_command():
    result = _run_cli("--help")
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.parametrize(("interrupted", "code"), [(False, 0), (True, 130)])
def test_an_interrupted_run_exits_130_after_exporting(dataset, monkeypatch, interrupted, code):
    from types import SimpleNamespace

    import pneumo_fastai.training.train as training

    seen = {}

    def fake_train(config, progress):
        seen["config"] = config
        return SimpleNamespace(
            card=SimpleNamespace(training=SimpleNamespace(interrupted=interrupted))
        )

    monkeypatch.setattr(training, "train", fake_train)
    result = runner.invoke(
        app, ["train", "--data", str(dataset), "--no-pretrained", "--size", "64"]
    )
    assert result.exit_code == code
    assert seen["config"].size == 64 and not seen["config"].pretrained


def test_a_command_whose_extra_is_missing_names_the_extra(dataset, tmp_path):
    import os

    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    result = _run_cli("train", "--data", str(dataset), "--no-pretrained", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pneumo-fastai[torch]" in result.stderr
