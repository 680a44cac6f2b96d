"""The run report: one self-contained HTML page (plots embedded as PNG) beside stats.json.

It answers what a data engineer asks after a run: how many samples came in and went out,
where and why the rest left, how full the packed sequences are on both budgets, what the
mix of modalities and sample lengths looks like, and which stage took the time.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curate.layout import RunLayout, write_text_atomic
from curate.stats import compute_stats


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(run: Path, stats: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(7, 3))
    stages = list(stats["rejected_by_stage"])
    ax.barh(["in", "synthesized"] + [f"rejected: {s}" for s in stages] + ["out"],
            [stats["samples_in"], stats["synthesized"]] + [sum(stats["rejected_by_stage"][s].values())
                                                           for s in stages] + [stats["samples_out"]],
            color=["#4c72b0", "#55a868"] + ["#c44e52"] * len(stages) + ["#4c72b0"])
    ax.invert_yaxis()
    ax.set_xlabel("samples")
    plots.append(("Funnel", _png(fig)))

    if stats["rejected"]:
        reasons = list(stats["rejected"].items())[:25]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(reasons) + 1))
        ax.barh([r for r, _ in reasons], [n for _, n in reasons], color="#c44e52")
        ax.invert_yaxis()
        ax.set_xlabel("rejected samples")
        plots.append(("Rejects by reason", _png(fig)))

    seq_path = RunLayout(run).sequences
    if seq_path.exists() and stats["sequences"]:
        seqs = pq.read_table(seq_path).to_pydict()
        budgets = stats["budgets"]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3))
        axes[0].hist([t / budgets["max_tokens"] for t in seqs["n_tokens"]], bins=20, range=(0, 1), color="#4c72b0")
        axes[0].set_title("token fill per sequence")
        axes[1].hist([t / budgets["max_tiles"] for t in seqs["n_tiles"]], bins=20, range=(0, 1), color="#dd8452")
        axes[1].set_title("tile fill per sequence")
        axes[2].hist(seqs["n_samples"], bins=min(30, max(seqs["n_samples"])), color="#55a868")
        axes[2].set_title("samples per sequence")
        plots.append(("Packing", _png(fig)))

    contents = pq.read_table(RunLayout(run).contents).to_pydict()
    if contents["id"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 3))
        mods = stats["modalities"]
        axes[0].bar(list(mods), list(mods.values()), color="#8172b3")
        axes[0].set_title("distinct samples per modality")
        axes[0].tick_params(axis="x", rotation=30)
        edges = [max(contents["n_tokens"]) * i / 40 for i in range(41)]
        axes[1].hist([[n for n, mm in zip(contents["n_tokens"], contents["modality"]) if mm == m] for m in mods],
                     bins=edges, stacked=True, label=list(mods))
        axes[1].set_title("tokens per sample")
        axes[1].legend(fontsize=7)
        plots.append(("Mix", _png(fig)))

    if stats["stage_seconds"]:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(stats["stage_seconds"]) + 1))
        ax.barh(list(stats["stage_seconds"]), list(stats["stage_seconds"].values()), color="#937860")
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        plots.append(("Stage time", _png(fig)))
    return plots


def write_report(run_dir: str | Path, stats: dict[str, Any] | None = None) -> Path:
    """Write <run>/report.html; returns its path."""
    run = RunLayout.of(run_dir).root
    stats = stats or compute_stats(run)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in stats.items() if not isinstance(v, dict))
    figures = "".join(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}'>"
                      for title, data in _plots(run, stats))
    ok = "ok" if stats["invariant_ok"] else "BROKEN"
    titles = {"rejected_by_stage": "Rejects by stage", "skipped_stages": "Skipped stages (and why)",
              "download": "Download", "packing": "Packing", "select": "Over-budget samples (select)",
              "stage_seconds": "Stage seconds", "budgets": "Budgets"}
    sections = "".join(f"<h2>{html.escape(titles.get(k, k))}</h2><pre>{html.escape(json.dumps(v, indent=2))}</pre>"
                       for k, v in stats.items() if isinstance(v, dict) and v and k not in ("rejected", "modalities"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>omnicurate report: {html.escape(run.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}th{{text-align:left;padding-right:1em}}
td,th{{border-bottom:1px solid #ddd;padding:2px 6px}}img{{max-width:100%}}</style></head><body>
<h1>omnicurate report: {html.escape(run.name)}</h1>
<p>samples_in + synthesized = samples_out + rejected: <b>{stats['samples_in']} + {stats['synthesized']} =
{stats['samples_out']} + {sum(stats['rejected'].values())}</b> ({ok})</p>
<table>{rows}</table>{figures}
{sections}
</body></html>"""
    return write_text_atomic(RunLayout(run).report, page)
