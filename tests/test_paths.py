"""Where things live: the project root from any folder inside it, relative paths against it, the cache folder,
and files written whole or not at all, with the debris of killed writers removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_kernels.paths import (atomic_write, cache_dir, find_project, project_root, remove_stale_temporaries,
                                 resolve_project_path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder that is a bench_kernels project (it holds params/default.yaml), with a subfolder."""
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "default.yaml").write_text("run_name: t\n")
    (tmp_path / "notebooks" / "deeper").mkdir(parents=True)
    return tmp_path


def test_the_project_is_found_from_any_folder_inside_it(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_project(project / "notebooks" / "deeper") == project.resolve()
    assert find_project(project) == project.resolve()
    assert find_project(project / "params") == project.resolve()
    monkeypatch.chdir(project / "notebooks")
    assert project_root() == project.resolve()
    assert resolve_project_path("reports/run") == project.resolve() / "reports" / "run"


def test_outside_a_project_paths_resolve_against_the_working_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_project(tmp_path) is None
    monkeypatch.chdir(tmp_path)
    assert project_root() == tmp_path.resolve()
    assert resolve_project_path("spec.yaml") == tmp_path.resolve() / "spec.yaml"
    assert resolve_project_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # absolute: as given
    assert resolve_project_path("~/x") == Path.home() / "x"


def test_cache_dir_lives_under_bench_kernels_cache_and_is_created(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_KERNELS_CACHE", str(tmp_path / "cache"))
    folder = cache_dir("onnx", "entry")
    assert folder == tmp_path / "cache" / "onnx" / "entry" and folder.is_dir()
    assert cache_dir("onnx", "entry") == folder  # a second call finds it
    monkeypatch.delenv("BENCH_KERNELS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "bench_kernels"


def test_the_tests_use_a_cache_of_their_own() -> None:
    user_cache = Path.home() / ".cache" / "bench_kernels"
    assert Path(os.environ["BENCH_KERNELS_CACHE"]).expanduser().resolve() != user_cache.resolve()


def test_atomic_write_replaces_whole_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    atomic_write(path, "a,b\n1,2\n")
    atomic_write(path, b"a,b\n3,4\n", mode=0o600)
    assert path.read_text() == "a,b\n3,4\n" and path.stat().st_mode & 0o777 == 0o600

    class Unwritable(str):
        """Text whose encoding fails after the temporary file was opened, as a full disk would."""

        def encode(self, *args: object, **kwargs: object) -> bytes:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, Unwritable("a,b\n5,6\n"))
    assert path.read_text() == "a,b\n3,4\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"], "no temporary file left"


def test_only_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)
    dead = tmp_path / f".results.csv.{dead_pid}.tmp"
    alive = tmp_path / f".results.csv.{os.getpid()}.tmp"
    unrelated = tmp_path / ".notes.tmp"  # no pid in the name: not atomic_write's, left alone
    for path in (dead, alive, unrelated):
        path.write_text("half a row")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and unrelated.exists()
