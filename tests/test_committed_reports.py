"""The published reports, as committed, in a real browser (a file of its own: pytest-xdist hands out whole files,
and apart from the end-to-end test these can go to the other worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import check_report, find_chromium

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("report", sorted(ROOT.glob("reports/*/report.html")), ids=lambda path: path.parent.name)
def test_committed_reports_read_whole_in_chromium(report: Path) -> None:
    """No cell of a published report shows e-notation, NaN or None, or text cut short, and a click on a header's
    text sorts each column of numbers in numeric order."""
    if not find_chromium():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/run must install Debian's chromium package")
        pytest.skip("chromium is not installed")
    seen = check_report(report)
    assert seen.unreadable_cells == [] and seen.problems == [], seen.unreadable_cells[:5] + seen.problems[:5]
    unsorted = [column for column, sorted_ in seen.header_sorts.items() if not sorted_]
    assert seen.header_sorts and unsorted == [], unsorted
