"""Open a report in headless Chromium: do its charts decode, is the console clean, does every cell read whole,
does a click on a header's text sort a column of numbers in numeric order; take a screenshot."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

# Without the background-networking flags Chromium keeps calling home, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@dataclass
class BrowserCheck:
    """What a browser saw when it opened the report."""

    images: list[dict] = field(default_factory=list)  # {"ok": decoded, "width": natural width, "alt": text}
    filtered_rows: tuple[int, int] | None = None  # the last interactive table's rows before and after filtering
    problems: list[str] = field(default_factory=list)  # console errors/warnings, page errors, failed requests
    unreadable_cells: list[str] = field(default_factory=list)  # e-notation, NaN/None, or text cut short
    # "table 2: tokens_per_s" -> whether a click on that header's text sorted it ascending, in numeric order
    header_sorts: dict[str, bool] = field(default_factory=dict)


# A number in e-notation, a missing value spelled out, or text that ends cut ("...", "…").
UNREADABLE_CELL = re.compile(r"\d(\.\d+)?e[+-]\d|^(nan|NaN|None|<NA>|NaT)$|(\.\.\.|…)$")
# A cell of a number column as the report writes it: '1,569.2', '-0.5', '$13,140'.
NUMBER_CELL = re.compile(r"^-?\$?[\d,]*\.?\d+$")


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_report(html_path: Path, screenshot_path: Path | None = None, width: int = 1280,
                 filter_text: str | None = None) -> BrowserCheck:
    """Load the report from disk in headless Chromium (Playwright drives it) and inspect it."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    seen = BrowserCheck()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: seen.problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: seen.problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: seen.problems.append(f"request failed: {r.url}"))
            page.goto(Path(html_path).resolve().as_uri())
            page.wait_for_load_state("load")
            # itables starts each table once its embedded DataTables has loaded, which can come after "load".
            page.wait_for_function("() => Array.from(document.querySelectorAll('table[id^=\"itables_\"]'))"
                                   ".every(t => t.classList.contains('dataTable'))", timeout=10_000)
            seen.images = page.evaluate(
                "Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, "
                "width: i.naturalWidth, alt: i.getAttribute('alt') || ''}))")
            cells = page.evaluate("Array.from(document.querySelectorAll('td, th')).map(c => c.innerText.trim())")
            seen.unreadable_cells = [cell for cell in cells if UNREADABLE_CELL.search(cell)]
            seen.header_sorts = header_sorts(page)
            if filter_text is not None:
                # The results table is the report's last interactive one: type into its search box, as a reader.
                search = page.locator("input[type=search]").last
                search.wait_for(timeout=10_000)
                table = page.locator("table.dataTable").last
                before = table.locator("tbody tr").count()
                search.fill(filter_text)
                page.wait_for_timeout(300)
                seen.filtered_rows = (before, table.locator("tbody tr").count())
            if screenshot_path is not None:
                page.screenshot(path=str(screenshot_path), full_page=True)
        finally:
            browser.close()
    return seen


def _number(cell: str) -> float:
    return float(cell.replace(",", "").replace("$", ""))


def header_sorts(page: Page) -> dict[str, bool]:
    """Click the title text of every number column of every interactive table, as a reader would: is the column
    then sorted ascending (aria-sort) and do its shown cells read in ascending numeric order? A column counts as
    numbers when at least two of its shown cells are numbers and every other one is blank."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    sorts = {}
    tables = page.locator("table.dataTable")
    for t in range(tables.count()):
        table = tables.nth(t)
        headers = table.locator("thead th")
        for c in range(headers.count()):
            column = f"rows => rows.map(row => row.children[{c}] ? row.children[{c}].innerText.trim() : '')"
            cells = [cell for cell in table.locator("tbody tr").evaluate_all(column) if cell]
            if len(cells) < 2 or not all(NUMBER_CELL.match(cell) for cell in cells):
                continue
            header = headers.nth(c)
            header.locator(".dt-column-title").click()
            try:  # DataTables may redraw after the click's handler returns
                page.wait_for_function("th => th.getAttribute('aria-sort') === 'ascending'",
                                       arg=header.element_handle(), timeout=2_000)
            except PlaywrightTimeout:
                sorts[f"table {t + 1}: {header.inner_text().strip()}"] = False
                continue
            values = [_number(cell) for cell in table.locator("tbody tr").evaluate_all(column) if cell]
            sorts[f"table {t + 1}: {header.inner_text().strip()}"] = values == sorted(values)
    return sorts
