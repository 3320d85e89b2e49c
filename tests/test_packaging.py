"""environment.yml mirrors pyproject.toml, so conda users get the same dependency ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def normalized(spec: str) -> str:
    return re.sub(r"\s+", "", spec).lower()


def test_environment_yml_mirrors_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {normalized(s) for s in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {normalized(s) for s in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {normalized(s) for s in pip_block if not s.startswith("-e") and not s.startswith("torch==")}
    assert listed == wanted
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = next(s for s in pip_block if s.startswith("torch=="))
    assert f"TORCH_SPEC ?= {torch_pin}" in makefile


def test_every_pin_outside_pip_matches_the_one_in_pyproject() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["bench-kernels"]["pins"]
    places = ["Makefile", "environment.yml", "README.md", "mypy-tensorrt.ini", "bench_kernels/models.py",
              "tests/runtimes/tensorrt/test_engine.py"]
    found = {name: set() for name in pins}
    for place in places:
        text = (ROOT / place).read_text()
        for name in pins:
            found[name] |= set(re.findall(rf"{re.escape(name)}==([\w.+]+)", text))
    assert found == {name: {version} for name, version in pins.items()}

