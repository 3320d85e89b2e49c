"""nbval on the notebooks, run in a scratch copy of the project so that their default run (run_name `notebook`)
writes to the scratch reports/ and never into the checkout's; the committed runs the comparison notebook reads are
linked in. Usage: python -m tests.run_notebooks [pytest options], e.g. --nbval-kernel-name bench-kernels."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cache import use_test_cache

ROOT = Path(__file__).resolve().parents[1]


def scratch_project(folder: Path, finished_run: Path | None = None) -> Path:
    """A project in folder: copies of notebooks/ and params/, reports/ holding links to the checkout's run folders.
    The notebooks' own run (`notebook`) starts empty, as in a fresh clone, or as a copy of finished_run."""
    shutil.copytree(ROOT / "notebooks", folder / "notebooks")
    shutil.copytree(ROOT / "params", folder / "params")
    (folder / "reports").mkdir()
    for run in sorted((ROOT / "reports").iterdir()):
        if run.is_dir() and run.name != "notebook":
            (folder / "reports" / run.name).symlink_to(run, target_is_directory=True)
    if finished_run is not None:
        shutil.copytree(finished_run, folder / "reports" / "notebook")
    return folder / "notebooks"


def main(args: list[str]) -> int:
    use_test_cache()
    with tempfile.TemporaryDirectory(prefix="bench-kernels-notebooks-") as scratch:
        notebooks = scratch_project(Path(scratch))
        return int(pytest.main(["-p", "no:cacheprovider", "--nbval-lax", *args, str(notebooks)]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
