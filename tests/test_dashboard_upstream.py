"""The dashboard's results page of a post-processing that took an analysis's values
(``$results``), in a real browser against a real ``caliber dashboard`` process: it names the
analysis's Results its values came from (the completed ones of a retried analysis), links to
their page and their workload's, and says when the record was changed in the store (the
Results' signature no longer checks)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
from tests.test_dashboard import Dashboard, browser, dashboard, shot
from tests.test_upstream_chain import view
from tests.test_upstream_provenance import Night

__all__ = ["browser", "dashboard"]  # fixtures


def test_the_results_page_names_and_links_the_upstream_results(
    dashboard: Dashboard, browser: Any, tmp_path: Path, caliber_home: Path
) -> None:
    first, second, failed_id = Night(tmp_path).retried()
    completed_id, post_id = view(first)["results_id"], view(second)["results_id"]
    assert completed_id != failed_id

    page = browser.new_page()
    page.goto(dashboard.address.replace("/?", f"/results/{post_id}?"))
    page.wait_for_selector("#inputs li")
    assert page.inner_text("#inputs") == (
        f"inputs from: analysis 'Solve', 'Field' (workload {first}, results {completed_id})")
    assert page.inner_text("#unsigned") == ""
    assert page.locator("#inputs a", has_text=first).get_attribute("href") == (
        f"/workload/{first}")
    shot(page, tmp_path, "upstream-results")
    page.click(f"#inputs a:has-text('{completed_id}')")  # to the analysis's Results
    page.wait_for_selector("section.task[data-task='Solve']")
    assert page.url.endswith(f"/results/{completed_id}")
    assert completed_id in page.inner_text("#rid")
    assert not page.locator("#inputs").is_visible()  # the analysis took nothing

    with sqlite3.connect(caliber_home / "caliber.db") as conn:
        conn.execute("UPDATE results SET body = json_set(body, '$.upstream[0].results', ?) "
                     "WHERE id = ?", (failed_id, post_id))
    page.goto(f"{dashboard.base}/results/{post_id}")
    page.wait_for_selector("#inputs li")
    assert f"results {failed_id}" in page.inner_text("#inputs")
    assert page.inner_text("#unsigned") == (
        f"not vouched for: results {post_id} are not signed with your key (signed with "
        "another key, or changed since)")
