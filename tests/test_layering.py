"""The road's direction: no import runs back up the road; lazy imports; no cycles.

The direction checks run in a fresh interpreter and read `sys.modules`, so that nothing this
test process imported earlier can hide an import (one interpreter for all of them, imports
in order, lightest first). The layer and cycle checks read the source (`ast`), so
that an import inside a function counts as much as one at the top.
"""

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pneumo_fastai"


DIRECTION = [  # inference and evaluation modules that must not import training
    "pneumo_fastai.inference.loading",
    "pneumo_fastai.inference.predict",
    "pneumo_fastai.inference.onnx_engine",
    "pneumo_fastai.evaluation.evaluate",
    "pneumo_fastai.evaluation.plots",
    "pneumo_fastai.evaluation.report",
]
STEPS = {  # name -> import statement; run in this order, lightest first
    "lazy": "import pneumo_fastai, pneumo_fastai.card, pneumo_fastai.data.layout",
    "onnx": "import pneumo_fastai.inference.onnx_engine, pneumo_fastai.inference.members",
    "load_model": "from pneumo_fastai import load_model",
    **{module: f"import {module}" for module in DIRECTION},
}
AFTER_EACH = """
import json, sys
after = {}
for name, statement in json.loads(sys.argv[1]).items():
    try:
        exec(statement, {})
    except ImportError as e:
        after[name] = f"{type(e).__name__}: {e}"
    else:
        after[name] = sorted(sys.modules)
print(json.dumps(after))
"""


@pytest.fixture(scope="module")
def modules_after() -> dict[str, list[str] | str]:
    """`sys.modules` after each of STEPS, run in order in one fresh interpreter (or the import's
    error). A step also holds what the steps before it imported, so a check that passes on it
    passes on its import alone."""
    result = subprocess.run(
        [sys.executable, "-c", AFTER_EACH, json.dumps(STEPS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _loaded(modules_after: dict[str, list[str] | str], step: str) -> list[str]:
    loaded = modules_after[step]
    assert isinstance(loaded, list), f"{STEPS[step]}: {loaded}"
    return loaded


@pytest.mark.parametrize("module", DIRECTION)
def test_inference_and_evaluation_do_not_import_training(module, modules_after):
    loaded = _loaded(modules_after, module)
    assert module in loaded
    assert not [m for m in loaded if m.startswith("pneumo_fastai.training")]
    assert "accelerate" not in loaded and "fastai.distributed" not in loaded


def test_the_onnx_engine_and_what_it_shares_import_neither_torch_nor_fastai(modules_after):
    pytest.importorskip("onnxruntime", reason="onnxruntime comes with the [onnx] extra")
    loaded = _loaded(modules_after, "onnx")
    assert "pneumo_fastai.inference.ood_check" in loaded
    assert not {"torch", "fastai", "torchvision"} & set(loaded)


def test_load_model_does_not_import_accelerate_or_the_dataset_audit(modules_after):
    loaded = _loaded(modules_after, "load_model")
    assert "pneumo_fastai.inference.predict" in loaded
    for absent in ("accelerate", "pneumo_fastai.training.train", "pneumo_fastai.datatools.check"):
        assert absent not in loaded, absent


def test_import_pneumo_fastai_is_lazy(modules_after):
    loaded = _loaded(modules_after, "lazy")
    assert not {"torch", "fastai", "numpy"} & set(loaded)


def _module_names(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's __init__)."""
    names = {}
    for file in root.rglob("*.py"):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        names[".".join(parts[:-1] if package else parts)] = (file, package)
    return names


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package its import statements name."""
    names = _module_names(root)
    graph = {}
    for name, (file, package) in names.items():
        here = name if package else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets |= {sub} if sub in names else {base} & names.keys()
        graph[name] = targets - {name}
    return graph


def test_the_import_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "pneumo_fastai.inference.classifier" in graph["pneumo_fastai.inference.onnx_engine"]
    assert "pneumo_fastai.inference.onnx_engine" in graph["pneumo_fastai.inference.predict"]
    assert "pneumo_fastai.inference.members" in graph["pneumo_fastai.inference.loading"]
    assert "pneumo_fastai.inference.onnx_export" in graph["pneumo_fastai.training.export"]


# The road's layers, lowest first: a module imports only from its own layer or lower ones.
# `card` (the export's schema) sits below training, which writes it, and inference, which reads
# it. Training writes the export with inference's tools (the pooled features, the OOD maths,
# the ONNX exporter), so it sits above inference, beside evaluation and serve: on the road it
# comes first (its export is what inference reads), but nothing below it imports it. serve shows
# evaluation's Grad-CAM. The edges (datatools, the package's lazy front) are not ranked.
LAYERS: list[tuple[str, ...]] = [
    ("config", "errors", "fileio", "progress", "device", "zipfiles"),  # shared by every stage
    ("data",),
    ("figures",),  # pure functions of arrays and labels
    ("model", "weights"),
    ("card", "valid_csv"),  # the export's schema and its validation predictions
    ("inference",),
    ("training", "evaluation"),
    ("serve",),
    ("cli",),
]
EDGES = ("datatools",)  # may import any layer and be imported by any (`data check`, downloads)
APART = {"training", "evaluation"}  # one layer, two stages: neither imports the other


def layer_of(module: str) -> int | None:
    """The rank of a module of the package in LAYERS (None for the edges and the package)."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in EDGES:
        return None
    ranks = [rank for rank, names in enumerate(LAYERS) if parts[0] in names]
    assert ranks, f"{module} is in no layer of LAYERS: add it where it belongs"
    return ranks[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for each import of a module `b` in a higher layer than `a`, or one between the
    stages of a layer that stay APART."""
    found = []
    for module, targets in graph.items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if here is None or there is None:
                continue
            stages = {module.split(".")[1], target.split(".")[1]}
            sideways = len(stages) == 2 and stages <= APART
            if there > here or sideways:
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_no_import_runs_back_up_the_road():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_sees_an_upward_and_a_sideways_import():
    graph = {
        "pneumo_fastai.model": {"pneumo_fastai.evaluation.metrics", "pneumo_fastai.config"},
        "pneumo_fastai.training.train": {"pneumo_fastai.evaluation.plots"},
        "pneumo_fastai.evaluation.plots": {"pneumo_fastai.figures.metrics"},
        "pneumo_fastai.serve.app": {"pneumo_fastai.datatools.download"},
    }
    assert upward_imports(graph) == [
        "pneumo_fastai.model -> pneumo_fastai.evaluation.metrics",
        "pneumo_fastai.training.train -> pneumo_fastai.evaluation.plots",
    ]


def test_no_module_of_the_package_imports_itself_back():
    graph = import_graph()
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    engine = "pneumo_fastai.inference.onnx_engine"
    assert "pneumo_fastai.inference.predict" not in graph[engine], "the engines share classifier"
