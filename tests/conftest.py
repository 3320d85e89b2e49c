"""Shared fixtures: the project root and a small real sweep config writing under tmp."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (params/, reports/) resolve against the project root, as in real use."""
    monkeypatch.chdir(ROOT)
