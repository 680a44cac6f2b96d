"""The run report: one self-contained HTML page (plots embedded as PNG) beside stats.json.

Readable in a minute: the funnel, every stage's rows, time and throughput (and which stages
have not run yet, for a partial run), rejects by stage and reason with three examples each
(the manifest's own id, source, an excerpt, the detail), benchmark overlaps per benchmark
with example items, and where the review files are, a
per-source table, the score histograms with their thresholds, packing fill per shard,
tokens and tiles per sample by modality, and the download section. Every section is a table
or a plot; nothing is a raw JSON dump. `curate report DIR` rewrites it for any run folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from curate.layout import RunLayout, write_text_atomic
from curate.stats import compute_stats, partial_stats, read_markers, read_rejects, reject_counts

EXAMPLES_PER_REASON = 3
EXCERPT_CHARS = 160
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:2px solid #4c72b0}
table{border-collapse:collapse;margin:.4em 0;max-width:100%}td,th{border-bottom:1px solid #ddd;padding:2px 8px;
text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.x{max-width:420px;overflow-wrap:anywhere;font-size:.9em}td.code,code{font-family:monospace;overflow-wrap:anywhere}
img{max-width:100%;height:auto;display:block}.bad{color:#c44e52;font-weight:bold}.ok{color:#55a868}
.note{color:#666;font-size:.9em}.wrap{overflow-x:auto;max-width:100%}
.ex table{width:100%;table-layout:fixed}.ex td{overflow-wrap:anywhere;font-size:.9em}
.ex th:nth-child(1){width:16%}.ex th:nth-child(2){width:14%}.ex th:nth-child(3){width:10%}
.ex th:nth-child(4){width:32%}.ex th:nth-child(5){width:28%}"""


# ---------------------------------------------------------------------------- small helpers
def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:,.3f}".rstrip("0").rstrip(".") if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else _e(x)


def table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None, cls: str = "",
          attrs: list[dict[int, str]] | None = None) -> str:
    """An HTML table; columns in `numeric` are right-aligned numbers; attrs: per row, per cell attributes."""
    numeric = numeric if numeric is not None else {i for i, _ in enumerate(header) if i}
    head = "".join(f"<th{' class=n' if i in numeric else ''}>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, v in enumerate(row):
            extra = (attrs[r].get(i, "") if attrs else "")
            if i in numeric:
                cells.append(f"<td class=n{extra}>{_num(v)}</td>")
            else:
                cells.append(f"<td{' class=' + cls if cls and i == len(row) - 1 else ''}{extra}>{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class=wrap><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _column(layout: RunLayout, name: str, columns: list[str], stage: str | None = None) -> pa.Table | None:
    """`columns` of the stage that produced column `name` (the first folder that has it), or of `stage`.

    The producing stage still holds the rows it rejected, so a score histogram shows both sides
    of its threshold; later folders would count repeated copies.
    """
    folders = sorted(layout.work.glob(f"[0-9][0-9]-{stage or '*'}")) if layout.work.exists() else []
    for folder in folders:
        if folder.name.endswith(".tmp") or not folder.is_dir():
            continue
        try:
            ds = pads.dataset(str(folder), format="parquet")
        except (OSError, ValueError, pa.ArrowInvalid):
            continue
        if name in ds.schema.names:
            return ds.to_table(columns=[c for c in columns if c in ds.schema.names])
    return None


def _recipe(layout: RunLayout) -> dict[str, Any]:
    try:
        return yaml.safe_load(layout.recipe.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


# ---------------------------------------------------------------------------- sections
def section_summary(stats: dict[str, Any], layout: RunLayout) -> str:
    n_rej = sum(stats["rejected"].values())
    rows = [["samples in (manifest lines)", stats["samples_in"]],
            ["synthesized (audio-QA, split parts)", stats["synthesized"]],
            ["rejected", n_rej], ["samples out (distinct, in the shards)", stats["samples_out"]],
            ["copies added by repeat factors", stats["repeats"]]]
    keys = ["samples_in", "synthesized", "rejected", "samples_out", "repeats"]
    attrs = [{1: f" data-funnel={k}"} for k in keys]
    if stats.get("partial"):
        check = "<p class=bad>This run has no shards yet: the funnel stops where the run stopped.</p>"
    else:
        ok = stats["invariant_ok"]
        check = (f"<p>in + synthesized = out + rejected: {stats['samples_in']:,} + {stats['synthesized']:,} = "
                 f"{stats['samples_out']:,} + {n_rej:,} <span class={'ok' if ok else 'bad'}>"
                 f"{'holds' if ok else 'BROKEN'}</span></p>")
    out = table(["funnel", "samples"], rows, attrs=attrs) + check
    if not stats.get("partial"):
        budgets = stats.get("budgets") or {}
        out += table(["output", "value"], [
            ["shards", stats["shards"]], ["packed sequences", stats["sequences"]], ["tokens", stats["tokens"]],
            ["tiles", stats["tiles"]], ["bytes", stats.get("bytes")],
            ["token fill", f"{stats['token_fill']:.1%} of {budgets.get('max_tokens')} per sequence"],
            ["tile fill", f"{stats['tile_fill']:.1%} of {budgets.get('max_tiles')} per sequence"]])
    return out


def section_stages(stats: dict[str, Any], layout: RunLayout, recipe: dict[str, Any]) -> str:
    from curate.stages.registry import STAGES

    markers = read_markers(layout)
    cfg = recipe.get("stages") or {}
    rows, not_run = [], []
    for spec in STAGES:
        enabled = ((cfg.get(spec.section) or {}).get("enabled", True) if cfg  # no recipe: the required ones
                   else spec.required or spec.name in markers)
        m = markers.get(spec.name)
        if m is None:
            if enabled:
                not_run.append(spec.name)
                rows.append([spec.name, "not run", None, None, None, None, None])
            continue
        seconds = m.get("seconds") or 0
        status = f"skipped: {m['skipped']}" if m.get("skipped") else "done"
        rows.append([spec.name, status, m.get("rows"), m.get("kept"), sum((m.get("rejected") or {}).values()),
                     seconds, round(m["rows"] / seconds, 1) if seconds and m.get("rows") else None])
    out = table(["stage", "status", "rows", "kept", "rejected", "seconds", "rows/s"], rows, numeric={2, 3, 4, 5, 6})
    from curate.stats import not_eligible_of

    skipped_rows = [[stage, reason, n] for stage, reasons in not_eligible_of(markers).items()
                    for reason, n in reasons.items()]
    if skipped_rows:  # kept, untouched: e.g. Chinese samples audio_qa has no voice for
        out += table(["stage", "not eligible (passed through untouched)", "samples"], skipped_rows, numeric={2})
    if not_run:
        out = f"<p class=bad>Not run yet: {_e(', '.join(not_run))}.</p>" + out
    if stats.get("wall_seconds"):
        out += f"<p class=note>wall time {stats['wall_seconds']:,.1f} s (Ray start-up included)</p>"
    return out


def _clip(text: str, n: int) -> str:
    return text[:n] + ("..." if len(text) > n else "")


def _excerpt(row: dict[str, Any]) -> str:
    turns = row.get("conversations") or []
    text = " ".join(" ".join((t.get("value") or "").split()) for t in turns)
    if not text and row.get("manifest") and row.get("line"):
        try:  # a line that did not parse: show the line itself
            with open(row["manifest"], "rb") as f:
                for i, line in enumerate(f, 1):
                    if i == row["line"]:
                        text = line.decode("utf-8", "replace").strip()
                        break
        except OSError:
            text = ""
    return _clip(text, EXCERPT_CHARS)


def section_rejects(layout: RunLayout) -> str:
    rejects = read_rejects(layout)
    if not len(rejects):
        return "<p>No sample was rejected.</p>"
    _, by_stage = reject_counts(rejects)
    counts = {(stage, reason): n for stage, reasons in by_stage.items() for reason, n in reasons.items()}
    rows = [[s, r, n] for (s, r), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    out = table(["stage", "reason", "samples"], rows, numeric={2})
    examples = []
    for stage, reason, _ in rows:
        picked = rejects.filter(pc.and_(pc.equal(rejects.column("reject_stage"), stage),
                                        pc.equal(rejects.column("reject_reason"), reason)))
        picked = picked.slice(0, EXAMPLES_PER_REASON).to_pylist()
        convs = _conversations(layout, [p["id"] for p in picked])
        for p in picked:
            p["conversations"] = convs.get(p["id"])
            examples.append([f"{stage}: {reason}", p.get("orig_id") or p["id"], p.get("source"),
                             _excerpt(p), _clip(p.get("reject_detail") or "", 200)])
    out += "<h3>Examples (three per reason)</h3><div class=ex>" + table(
        ["stage: reason", "id", "source", "excerpt", "detail"], examples, numeric=set()) + "</div>"
    out += section_benchmarks(rejects)
    files = [f"<code>{_e(p.relative_to(layout.root))}</code>" for p in sorted(layout.rejects_dir.glob("*.parquet"))]
    review = layout.review()
    if review.exists():
        files += [f"<a href='{_e(d.relative_to(layout.root))}/'><code>{_e(d.relative_to(layout.root))}/</code></a>"
                  f" ({len(list(d.rglob('*.jsonl')))} files)" for d in sorted(review.iterdir()) if d.is_dir()]
    out += "<p>All rejects: " + ", ".join(files) + " (in the run folder; "
    out += "<code>curate find RUN ID</code> tells where one sample went).</p>"
    return out


def section_benchmarks(rejects: pa.Table) -> str:
    """Samples rejected for a benchmark overlap, per benchmark, with example items and the
    text they share (from the decontaminate stage's details; empty when there are none)."""
    import re

    picked = rejects.filter(pc.equal(rejects.column("reject_reason"), "benchmark_overlap"))
    if not len(picked):
        return ""
    found = [re.match(r'benchmark=(\S+) item=(.*?) turn=\d+ shared="(.*)"?$', d or "")
             for d in picked.column("reject_detail").to_pylist()]
    per: dict[str, list[tuple[str, str, str]]] = {}
    for m, rid in zip(found, picked.column("id").to_pylist()):
        if m:
            per.setdefault(m.group(1), []).append((m.group(2), rid, m.group(3).rstrip('"')))
    rows = [[name, len(hits), "; ".join(f"{item} ({_clip(shared, 80)})" for item, _, shared in hits[:3])]
            for name, hits in sorted(per.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    return ("<h3>Benchmark overlap (decontaminate), per benchmark</h3>"
            + table(["benchmark", "samples", "example items (shared text)"], rows, numeric={1}, cls="x"))


def _conversations(layout: RunLayout, ids: list[str]) -> dict[str, Any]:
    """Conversations of some rows, from the earliest stage folder that has them."""
    if not ids or not layout.work.exists():
        return {}
    for folder in sorted(layout.work.glob("[0-9][0-9]-*")):
        if folder.name.endswith(".tmp"):
            continue
        try:
            ds = pads.dataset(str(folder), format="parquet")
            if "conversations" not in ds.schema.names:
                continue
            t = ds.to_table(columns=["id", "conversations"], filter=pc.field("id").isin(ids))
        except (OSError, ValueError, pa.ArrowInvalid):
            continue
        found = {r["id"]: r["conversations"] for r in t.to_pylist() if r["conversations"]}
        if found:
            return found
    return {}


def section_sources(stats: dict[str, Any], layout: RunLayout, recipe: dict[str, Any]) -> str:
    sources = {s["name"]: s for s in recipe.get("sources") or []}
    ingest = None
    first = sorted(layout.work.glob("[0-9][0-9]-ingest")) if layout.work.exists() else []
    if first:
        ingest = pads.dataset(str(first[0]), format="parquet").to_table(columns=["source", "origin"])
    counts: dict[str, dict[str, float]] = {}

    def add(table_: pa.Table | None, key: str, weight: str | None = None) -> None:
        if table_ is None or not len(table_):
            return
        ws = table_.column(weight).to_pylist() if weight else [1] * len(table_)
        for s, w in zip(table_.column("source").to_pylist(), ws):
            counts.setdefault(s, {})
            counts[s][key] = counts[s].get(key, 0) + w

    add(ingest, "in")
    add(read_rejects(layout), "rejected")
    contents = pq.read_table(layout.contents) if layout.contents.exists() else None
    add(contents, "out")
    add(contents, "copies", "copies")
    total_copies = sum(c.get("copies", 0) for c in counts.values())
    rows = []
    for name in sorted(set(counts) | set(sources)):
        c = counts.get(name, {})
        share = c.get("copies", 0) / total_copies if total_copies else 0.0
        repeat = (sources.get(name) or {}).get("repeat", 1.0)
        rows.append([name, int(c.get("in", 0)), int(c.get("out", 0)), int(c.get("rejected", 0)),
                     int(c.get("copies", 0)), f"{share:.1%}", repeat])
    out = table(["source", "in", "out", "rejected", "copies", "share of copies", "repeat"], rows,
                numeric={1, 2, 3, 4, 5, 6})
    mix = (stats.get("packing") or {}).get("mixture") or {}
    if mix.get("achieved"):
        mrows = [[m, f"{share:.1%}", f"{mix['target'][m]:.1%}" if m in mix.get("target", {}) else "none"]
                 for m, share in mix["achieved"].items()]
        out += "<h3>Modality mix (copies)</h3>" + table(["modality", "achieved share", "target"], mrows,
                                                          numeric={1, 2})
    return out


def _hist(ax, values: list[float], title: str, threshold: float | None = None, label: str = "") -> None:
    ax.hist(values, bins=min(30, max(5, len(set(values)))), color="#4c72b0")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"{label} {threshold}")
        ax.legend(fontsize=7)
    ax.set_title(f"{title} (n={len(values)})", fontsize=9)


def section_scores(layout: RunLayout, recipe: dict[str, Any]) -> str:
    cfg = recipe.get("stages") or {}
    flt, score, aqa = cfg.get("filter") or {}, cfg.get("score") or {}, cfg.get("audio_qa") or {}
    panels: list[tuple[str, list[Any], float | None, str]] = []
    for col, title, thr, label in (
            ("repetition_score", "repetition score", flt.get("repetition_threshold"), "reject at >="),
            ("quality_score", "LLM quality score", score.get("threshold"), "keep at >="),
            ("asr_confidence", "ASR confidence", None, ""),
            ("audio_qa_wer", "audio-QA WER (TTS read back)", aqa.get("max_wer"), "reject above")):
        t = _column(layout, col, [col])
        vals = [v for v in t.column(col).to_pylist() if v is not None] if t is not None else []
        if vals:
            panels.append((title, vals, thr, label))
    durations = []
    t = _column(layout, "media", ["media"], stage="tokenize")  # every sample once, spoken questions too
    if t is not None:
        durations = [m["duration"] for ms in t.column("media").to_pylist() for m in ms or []
                     if m and m.get("kind") == "audio" and m.get("duration") is not None]
    if durations:
        panels.append(("audio duration (s)", durations, None, ""))
    langs = _column(layout, "language", ["language"])
    lang_counts: dict[str, int] = {}
    for v in langs.column("language").to_pylist() if langs is not None else []:
        if v:
            lang_counts[v] = lang_counts.get(v, 0) + 1
    if not panels and not lang_counts:
        return "<p>No scores in this run (filter, score, transcribe and audio_qa did not run).</p>"
    plt = _plt()
    n = len(panels) + bool(lang_counts)
    cols = min(3, n)
    rows_ = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(4 * cols, 2.8 * rows_), squeeze=False)
    for ax, (title, vals, thr, label) in zip(axes.flat, panels):
        _hist(ax, vals, title, thr, label)
    if lang_counts:
        ax = axes.flat[len(panels)]
        top = sorted(lang_counts.items(), key=lambda kv: -kv[1])[:12]
        ax.bar([k for k, _ in top], [v for _, v in top], color="#8172b3")
        ax.set_title("language (fastText LID)", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig) + "<p class=note>Dashed lines: the recipe's thresholds.</p>"


def section_packing(stats: dict[str, Any], layout: RunLayout) -> str:
    if stats.get("partial") or not layout.sequences.exists():
        return "<p>No shards yet.</p>"
    seqs = pq.read_table(layout.sequences).to_pydict()
    budgets = stats["budgets"]
    per_shard: dict[int, list[int]] = {}
    for sh, tok, til in zip(seqs["shard"], seqs["n_tokens"], seqs["n_tiles"]):
        acc = per_shard.setdefault(sh, [0, 0, 0])
        acc[0] += 1
        acc[1] += tok
        acc[2] += til
    rows = [[f"shard-{sh:06d}.tar", n, tok, til, f"{tok / (n * budgets['max_tokens']):.1%}",
             f"{til / (n * budgets['max_tiles']):.1%}"] for sh, (n, tok, til) in sorted(per_shard.items())]
    out = table(["shard", "sequences", "tokens", "tiles", "token fill", "tile fill"], rows)
    packing, select = stats.get("packing") or {}, stats.get("select") or {}
    facts = []
    if packing:
        facts += [["packing mode", packing.get("mode")], ["sequences", packing.get("sequences")],
                  ["lower bound on sequences", packing.get("lower_bound")],
                  ["sequences / lower bound", packing.get("over_lower_bound")]]
        if "partition_loss" in packing:
            facts.append(["partitions (cost vs one)", f"{packing['partitions']} ({packing['partition_loss']:+.2%})"])
    if select:
        facts += [[f"select (over budget): {k.replace('_', ' ')}", v] for k, v in select.items()
                  if not isinstance(v, dict)]
    if facts:
        out += table(["packing", "value"], facts)
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 2.8))
    axes[0].hist([t / budgets["max_tokens"] for t in seqs["n_tokens"]], bins=20, range=(0, 1), color="#4c72b0")
    axes[0].set_title("token fill per sequence", fontsize=9)
    axes[1].hist([t / budgets["max_tiles"] for t in seqs["n_tiles"]], bins=20, range=(0, 1), color="#dd8452")
    axes[1].set_title("tile fill per sequence", fontsize=9)
    axes[2].hist(seqs["n_samples"], bins=min(30, max(seqs["n_samples"] or [1])), color="#55a868")
    axes[2].set_title("samples per sequence", fontsize=9)
    fig.tight_layout()
    return out + _png(fig)


def section_samples(stats: dict[str, Any], layout: RunLayout) -> str:
    if not layout.contents.exists():
        return "<p>No shards yet.</p>"
    c = pq.read_table(layout.contents).to_pydict()
    if not c["id"]:
        return "<p>No sample reached the shards.</p>"
    rows = []
    mods = sorted(set(c["modality"]))
    for m in mods:
        tok = np.array([n for n, mm in zip(c["n_tokens"], c["modality"]) if mm == m])
        til = np.array([n for n, mm in zip(c["n_tiles"], c["modality"]) if mm == m])
        rows.append([m, len(tok), int(np.median(tok)), int(tok.mean()), int(tok.max()),
                     int(np.median(til)), round(float(til.mean()), 1), int(til.max())])
    out = table(["modality", "samples", "tokens median", "tokens mean", "tokens max", "tiles median",
                 "tiles mean", "tiles max"], rows)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 2.8))
    edges = np.linspace(0, max(c["n_tokens"]) or 1, 41)
    axes[0].hist([[n for n, mm in zip(c["n_tokens"], c["modality"]) if mm == m] for m in mods], bins=edges,
                 stacked=True, label=mods)
    axes[0].set_title("tokens per sample", fontsize=9)
    axes[0].legend(fontsize=7)
    tedges = np.arange(0, (max(c["n_tiles"]) or 1) + 2) - 0.5
    axes[1].hist([[n for n, mm in zip(c["n_tiles"], c["modality"]) if mm == m] for m in mods], bins=tedges,
                 stacked=True, label=mods)
    axes[1].set_title("tiles per sample", fontsize=9)
    fig.tight_layout()
    return out + _png(fig)


def section_download(stats: dict[str, Any]) -> str:
    d = stats.get("download")
    if not d:
        return "<p>No URL was fetched (local media only).</p>"
    rows = [["URLs", d["urls"]], ["fetched", d["fetched"]], ["failed", d["failed"]],
            ["success rate", f"{d['success_rate']:.1%}"], ["MB", round(d["bytes"] / 1e6, 2)],
            ["requests (with retries)", d["requests"]], ["MB/s per fetch", d["mb_per_fetch_second"]],
            ["URLs/s (stage)", d.get("urls_per_second")]]
    out = table(["download", "value"], rows)
    if d["failures"]:
        out += table(["failure reason", "URLs"], [[r, n] for r, n in d["failures"].items()])
    return out


def write_report(run_dir: str | Path, stats: dict[str, Any] | None = None) -> Path:
    """Write <run>/report.html (works on a finished or a partial run folder); returns its path."""
    layout = RunLayout.of(run_dir)
    run = layout.root
    if stats is None:
        try:
            stats = compute_stats(run)
        except FileNotFoundError:
            if not layout.work.exists():
                raise FileNotFoundError(f"{run}: not a run folder (no work/ and no shards/)") from None
            stats = partial_stats(layout)
        try:  # what only the run itself knew: wall time, skipped stages
            saved = json.loads(layout.stats.read_text())
            stats |= {k: saved[k] for k in ("wall_seconds", "skipped_stages") if k in saved}
        except (OSError, ValueError):
            pass
    recipe = _recipe(layout)
    sections = [
        ("Funnel", section_summary(stats, layout)),
        ("Stages: rows, time, throughput", section_stages(stats, layout, recipe)),
        ("Rejects by stage and reason", section_rejects(layout)),
        ("Sources", section_sources(stats, layout, recipe)),
        ("Scores and thresholds", section_scores(layout, recipe)),
        ("Packing: fill per shard", section_packing(stats, layout)),
        ("Tokens and tiles per sample", section_samples(stats, layout)),
        ("Download", section_download(stats)),
    ]
    skipped = stats.get("skipped_stages") or {}
    if skipped:
        sections.insert(2, ("Skipped stages", table(["stage", "why"], [[k, v] for k, v in skipped.items()],
                                                     numeric=set())))
    body = "".join(f"<h2>{_e(t)}</h2>{s}" for t, s in sections)
    title = f"omnicurate report: {_e(recipe.get('name') or run.name)}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{title}</title><style>{CSS}</style></head>"
            f"<body><h1>{title}</h1><p class=note>{_e(run)}</p>{body}</body></html>")
    return write_text_atomic(layout.report, page)


def funnel_numbers(page: str) -> dict[str, int]:
    """The funnel as written in a report page (tests compare it with `curate stats --json`)."""
    import re

    return {k: int(v.replace(",", "")) for k, v in re.findall(r"data-funnel=(\w+)>([\d,]+)<", page)}


__all__ = ["write_report", "funnel_numbers", "table"]
