"""Every usage line in a module docstring runs: its imports resolve, its commands exist.

The module docstrings of pneumo_fastai/, bench/ and examples/ start with how to use them. An
import line there (`from pneumo_fastai.x import y`, `import pneumo_fastai.x`, a bench script's
`from benchlib import z`) must name modules and names that exist, with bench/ and examples/ on
`sys.path` as when their scripts run, and a call of a name it imports must fit that name's
signature; a `pneumo-fastai ...` (or `-m pneumo_fastai.cli ...`) line must name commands and
options the CLI has; `python path.py` and `python -m module` must name a script or module that
exists.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from pneumo_fastai.cli import app

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pneumo_fastai", "bench", "examples")
SCRIPT_FOLDERS = ("bench", "examples")  # a script's own folder is on sys.path when it runs
COMMAND_WORDS = ("pneumo-fastai", "python", "accelerate", "torchrun")
CLI = re.compile(r"(?:^|\s)(?:pneumo-fastai|-m pneumo_fastai\.cli)(?=\s|$)(.*)")

# Runs in a fresh interpreter over [path, text, module, names, call] items: imports `module`,
# finds `names` in it (or, in a package, as its submodules) and, for a call [name, n_args,
# keywords], binds that many arguments and those keywords to the name's signature; prints
# [path, text, why] of each failure.
RESOLVE = """
import importlib, importlib.util, inspect, json, sys
sys.path[:0] = sys.argv[2:]
problems = []
for path, text, module, names, call in json.loads(sys.argv[1]):
    try:
        mod = importlib.import_module(module)
        missing = [n for n in names if n != "*" and not hasattr(mod, n) and not (
            hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{n}"))]
        if missing:
            raise ImportError(f"{module} has no {', '.join(missing)}")
        if call:
            name, n_args, keywords = call
            inspect.signature(getattr(mod, name)).bind(*[None] * n_args, **dict.fromkeys(keywords))
    except Exception as e:
        problems.append([path, text, f"{type(e).__name__}: {e}"])
print(json.dumps(problems))
"""


def _docstrings() -> Iterator[tuple[str, str]]:
    """(path relative to the repository, module docstring) of every source file that has one."""
    for folder in SOURCES:
        for file in sorted((REPO / folder).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(file.read_text()), clean=False)
            if doc:
                yield file.relative_to(REPO).as_posix(), doc


def _import_lines(doc: str) -> list[str]:
    """The docstring's lines that are Python import statements (doctest prompts removed)."""
    lines = []
    for line in doc.splitlines():
        text = line.strip().removeprefix(">>> ")
        if not re.match(r"(from|import)\s+\w", text):
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:  # prose that starts with "from" or "import"
            if "pneumo_fastai" in text.split()[1]:
                lines.append(text)  # meant as an import of ours: reported as broken
            continue
        if isinstance(tree.body[0], ast.Import | ast.ImportFrom):
            lines.append(text)
    return lines


def _commands(doc: str) -> list[str]:
    """Command lines: whole lines and `backticked` spans that start with a command word."""
    spans = []
    for line in doc.splitlines():
        spans += [line.strip(), *re.findall(r"`([^`]+)`", line)]
    return [s for s in spans if s.split(" ", 1)[0] in COMMAND_WORDS]


def _imported(line: str) -> list[tuple[str, list[str]]]:
    """The modules an import statement names, each with the names taken from it."""
    try:
        node = ast.parse(line).body[0]
    except SyntaxError:
        return []
    if isinstance(node, ast.ImportFrom):
        return [("." * node.level + (node.module or ""), [a.name for a in node.names])]
    return [(a.name, []) for a in node.names]


def _calls(doc: str, imports: list[str]) -> list[tuple[str, str, list]]:
    """(text, module, [name, n_args, keywords]) of each call of a name the docstring imports."""
    source = {n: m for line in imports for m, names in _imported(line) for n in names}
    calls = []
    for line in doc.splitlines():
        try:
            tree = ast.parse(line.strip().removeprefix(">>> "))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in source):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords
            ):
                continue  # *args or **kwargs: the count is unknown
            keywords = [k.arg for k in node.keywords]
            call = [node.func.id, len(node.args), keywords]
            calls.append((ast.unparse(node), source[node.func.id], call))
    return calls


DOCS = dict(_docstrings())
IMPORTS = {path: _import_lines(doc) for path, doc in DOCS.items()}
CALLS = {path: _calls(doc, IMPORTS[path]) for path, doc in DOCS.items()}
COMMANDS = {path: _commands(doc) for path, doc in DOCS.items()}


@pytest.fixture(scope="module")
def python_problems() -> dict[tuple[str, str], str]:
    """(path, line or call) -> why it does not run, for docstring imports and calls alike."""
    todo = [
        [path, line, module, names, None]
        for path, lines in IMPORTS.items()
        for line in lines
        for module, names in _imported(line)
    ]
    todo += [
        [path, text, module, [], call] for path, c in CALLS.items() for text, module, call in c
    ]
    return _resolve(todo)


def _resolve(todo: list[list]) -> dict[tuple[str, str], str]:
    folders = [str(REPO / f) for f in SCRIPT_FOLDERS]
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE, json.dumps(todo), *folders],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {(path, text): why for path, text, why in json.loads(result.stdout)}


def test_the_docstrings_hold_the_usage_lines_this_test_reads():
    assert (
        "from pneumo_fastai.inference.loading import load_export"
        in IMPORTS["pneumo_fastai/inference/loading.py"]
    )
    assert any(line.startswith("from benchlib import") for line in IMPORTS["bench/benchlib.py"])
    prose = IMPORTS["pneumo_fastai/inference/ood_scores.py"]
    assert not prose, "prose starting 'from a' is no import"
    assert COMMANDS["pneumo_fastai/training/run.py"][1].startswith("accelerate launch -m")
    assert "pneumo-fastai export onnx" in COMMANDS["pneumo_fastai/cli/export.py"]


def test_the_check_reports_missing_modules_names_and_arguments():
    doc = """
        from pneumo_fastai.figures.metrics import choose_threshold, no_such_name
        from pneumo_fastai.no_such_module import x
        import json
        t = choose_threshold(y, p, target_sensitivity=0.9)  # fits
        t = choose_threshold(y, p, sensitivity=0.9)
        t = choose_threshold(y, p, 0.9, 1)
    """
    imports = _import_lines(doc)
    todo = [["doc", line, m, names, None] for line in imports for m, names in _imported(line)]
    todo += [["doc", text, m, [], call] for text, m, call in _calls(doc, imports)]
    problems = {text: why for (_, text), why in _resolve(todo).items()}
    assert len(imports) == 3 and len(todo) == 6
    assert problems == {
        imports[0]: "ImportError: pneumo_fastai.figures.metrics has no no_such_name",
        imports[1]: "ModuleNotFoundError: No module named 'pneumo_fastai.no_such_module'",
        "choose_threshold(y, p, sensitivity=0.9)": (
            "TypeError: got an unexpected keyword argument 'sensitivity'"
        ),
        "choose_threshold(y, p, 0.9, 1)": "TypeError: too many positional arguments",
    }


@pytest.mark.parametrize("path", [p for p, lines in IMPORTS.items() if lines])
def test_every_import_in_a_module_docstring_resolves(path, python_problems):
    broken = {
        line: python_problems.get((path, line), "not an import statement")
        for line in IMPORTS[path]
        if (path, line) in python_problems or not _imported(line)
    }
    assert not broken, f"{path}: {broken}"


@pytest.mark.parametrize("path", [p for p, calls in CALLS.items() if calls])
def test_every_call_in_a_module_docstring_fits_the_signature(path, python_problems):
    broken = {
        t: python_problems[(path, t)] for t, *_ in CALLS[path] if (path, t) in python_problems
    }
    assert not broken, f"{path}: {broken}"


def _command_problems(tokens: list[str], root: Any) -> list[str]:
    """What a command line names that the CLI lacks: commands, subcommands, options."""
    command, names, problems = root, [], []
    for token in tokens:
        if token.startswith("-"):
            option = token.split("=", 1)[0]
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            if option not in known | {"--help"}:
                problems.append(f"`{' '.join(names) or 'pneumo-fastai'}` has no option {option}")
        elif hasattr(command, "commands"):  # a group (typer's own copy of click's)
            if token.isupper():  # a placeholder, such as CMD
                break
            if token not in command.commands:
                problems.append(f"no command `{' '.join([*names, token])}`")
                break
            command = command.commands[token]
            names.append(token)
    return problems


def _variants(tokens: list[str]) -> list[list[str]]:
    """`data download | check` -> `data download` and `data check`."""
    first, *others = " ".join(tokens).split(" | ")
    base = first.split()
    return [base, *([*base[:-1], *alt.split()] for alt in others)]


def _cli_problems(text: str) -> list[str]:
    match = CLI.search(text)
    if match is None:
        return []
    root = typer.main.get_command(app)
    tokens = shlex.split(match.group(1), comments=True)
    return [p for variant in _variants(tokens) for p in _command_problems(variant, root)]


def _python_problems(text: str) -> list[str]:
    tokens = shlex.split(text, comments=True)
    if tokens[0] != "python" or len(tokens) < 2:
        return []
    if tokens[1] == "-m":
        found = importlib.util.find_spec(tokens[2]) is not None
        return [] if found else [f"no module {tokens[2]}"]
    return [] if (REPO / tokens[1]).is_file() else [f"no script {tokens[1]}"]


def test_the_command_check_finds_what_the_cli_lacks():
    assert _cli_problems("pneumo-fastai train --data x --epochs 3") == []
    assert _cli_problems("pneumo-fastai data download | check | audit --out x") == []
    assert _cli_problems("torchrun --nproc_per_node 2 -m pneumo_fastai.cli train --data D") == []
    assert _cli_problems("pneumo-fastai CMD --help") == []
    assert _cli_problems("pneumo-fastai evaluate m.json --no-such") == [
        "`evaluate` has no option --no-such"
    ]
    assert _cli_problems("pneumo-fastai data fetch | check") == ["no command `data fetch`"]
    assert _cli_problems("python -m pneumo_fastai.cli explain x") == ["no command `explain`"]
    assert _python_problems("python bench/nowhere.py --x") == ["no script bench/nowhere.py"]


@pytest.mark.parametrize("path", [p for p, commands in COMMANDS.items() if commands])
def test_every_command_in_a_module_docstring_exists(path):
    problems = {
        text: found
        for text in COMMANDS[path]
        if (found := _cli_problems(text) + _python_problems(text))
    }
    assert not problems, f"{path}: {problems}"
