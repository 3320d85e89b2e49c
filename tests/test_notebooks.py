"""The notebooks: thin, stored without outputs; the numbered ones take exactly the sweep spec's keys, the
comparison two committed run folders."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill
import pytest

from bench_kernels.cli import COMPARE_NOTEBOOK, notebook_names, notebooks_dir
from bench_kernels.config import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
BOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COMPARE = ROOT / "notebooks" / COMPARE_NOTEBOOK
SWEEP_BOOKS = [p for p in BOOKS if p != COMPARE]


def test_pipeline_runs_every_numbered_notebook_and_the_project_folder_shows_them() -> None:
    assert COMPARE in BOOKS and notebook_names() == [p.name for p in SWEEP_BOOKS]
    assert (ROOT / "notebooks").resolve() == notebooks_dir().resolve()


@pytest.mark.parametrize("path", SWEEP_BOOKS, ids=lambda p: p.name)
def test_parameters_match_the_sweep_spec(path: Path) -> None:
    params = papermill.inspect_notebook(str(path))
    assert list(params) == list(SweepConfig.model_fields)
    defaults = SweepConfig()
    for name, info in params.items():
        assert info["help"], f"{name} has no trailing comment"
        assert ast.literal_eval(info["default"]) == getattr(defaults, name), name


def test_comparison_parameters_are_two_committed_runs() -> None:
    params = papermill.inspect_notebook(str(COMPARE))
    assert list(params) == ["run_a", "run_b"]
    for name, info in params.items():
        assert info["help"], f"{name} has no trailing comment"
        default = ast.literal_eval(info["default"])
        assert default.startswith("reports/") and (ROOT / default / "results.csv").is_file(), name
    assert params["run_a"]["default"] != params["run_b"]["default"]


@pytest.mark.parametrize("path", BOOKS, ids=lambda p: p.name)
def test_stored_without_outputs_and_thin(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert book.metadata.kernelspec.name == "bench-kernels"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None
        tree = ast.parse(cell.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)) for n in ast.walk(tree)), \
            "logic belongs in bench_kernels/"
