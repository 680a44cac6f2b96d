"""The report page: tables (no JSON dumps), partial runs, and a check in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.layout import RunLayout, write_json_atomic
from curate.report.html import funnel_numbers, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
         "--virtual-time-budget=5000"]
# Runs in the page once it has loaded; writes what a person would notice into the DOM.
CHECKS_JS = """<script>window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.body.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > width + 1)
    .map(e => e.tagName + (e.className ? '.' + e.className : ''));
  const imgs = [...document.images];
  const funnel = {};
  document.querySelectorAll('[data-funnel]').forEach(e => funnel[e.dataset.funnel] =
    parseInt(e.textContent.replace(/,/g, ''), 10));
  const out = {images: imgs.length, broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length,
               scroll_width: document.documentElement.scrollWidth, width: width, too_wide: wide.slice(0, 10),
               funnel: funnel};
  const pre = document.createElement('pre'); pre.id = 'page-checks'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def render_checks(report: Path, tmp_path: Path) -> dict:
    """Open the report in headless Chromium and return the checks the page wrote about itself."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup installs the Debian `chromium` package)")
    page = tmp_path / "checked.html"
    page.write_text(report.read_text().replace("</body>", CHECKS_JS + "</body>"))
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    start = proc.stdout.find('<pre id="page-checks">')
    assert start >= 0, f"chromium did not render the page: {proc.stderr[-2000:]}"
    body = proc.stdout[start + len('<pre id="page-checks">'):]
    import html

    return json.loads(html.unescape(body[: body.find("</pre>")]))


def partial_run(root: Path) -> RunLayout:
    """A run folder stopped after ingest: one marker, one reject, no shards."""
    layout = RunLayout(root)
    stage = layout.stage_dir(0, "ingest")
    stage.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "orig_id": ["t-1", "t-2"], "source": ["s", "s"],
                             "origin": ["manifest"] * 2, "conversations": pa.array(
                                 [[{"from": "human", "value": "hello there"}], None],
                                 pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
                             "reject_reason": [None, "invalid_json"]}), stage / "part-0.parquet")
    write_json_atomic(layout.marker(stage), {"stage": "ingest", "hash": "x", "rows": 2, "kept": 1,
                                            "rejected": {"invalid_json": 1}, "seconds": 0.5})
    manifest = root / "m.jsonl"
    manifest.write_text('{"id": "t-1"}\n{"id": "t-2", broken\n')
    layout.rejects_dir.mkdir()
    pq.write_table(pa.table({"id": ["b"], "orig_id": ["t-2"], "source": ["s"], "origin": ["manifest"],
                             "modality": [None], "manifest": [str(manifest)], "line": [2],
                             "reject_stage": ["ingest"], "reject_reason": ["invalid_json"],
                             "reject_detail": ["Expecting ':' at column 20"]}), layout.rejects("ingest"))
    return layout


def test_partial_run_report_says_which_stages_have_not_run(tmp_path):
    layout = partial_run(tmp_path)
    page = write_report(tmp_path).read_text()
    assert "Not run yet: tokenize, pack_select, pack_plan, shard." in page  # no recipe: the required stages
    assert funnel_numbers(page) == {"samples_in": 2, "synthesized": 0, "rejected": 1, "samples_out": 0, "repeats": 0}
    assert "t-2" in page and "{&quot;id&quot;: &quot;t-2&quot;, broken" in page  # example: own id, the line
    assert "<pre" not in page
    assert layout.report.exists()


def test_not_a_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        write_report(tmp_path)


def test_partial_report_renders_in_chromium(tmp_path):
    partial_run(tmp_path / "run")
    checks = render_checks(write_report(tmp_path / "run"), tmp_path)
    assert checks["broken"] == 0 and checks["too_wide"] == [] and checks["scroll_width"] <= checks["width"]
    assert checks["funnel"]["samples_in"] == 2


def test_the_page_checks_catch_a_broken_image_and_a_too_wide_element(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='data:image/png;base64,AAAA'><div style='width:3000px'>x</div>"
                   "<table><tr><td data-funnel=samples_in>1,234</td></tr></table></body></html>")
    checks = render_checks(bad, tmp_path)
    assert checks["broken"] == 1 and checks["too_wide"] and checks["scroll_width"] > checks["width"]
    assert checks["funnel"] == {"samples_in": 1234}
