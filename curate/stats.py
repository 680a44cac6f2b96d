"""Run statistics: the funnel (in, synthesized, out, rejected by reason) and packing fill.

Invariant: samples_in + synthesized = samples_out + sum(rejected), where
samples_out counts distinct samples in the shards; copies from repeat factors > 1 are
reported as `repeats` and stay out of the invariant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.layout import RunLayout, read_marker


def compute_stats(run_dir: str | Path) -> dict[str, Any]:
    layout = RunLayout.of(run_dir)
    if not layout.index.exists():
        raise FileNotFoundError(f"{layout.root}: no shards/index.json (is this a finished run folder?)")
    index = json.loads(layout.index.read_text())
    contents = pq.read_table(layout.contents)
    rejects = read_rejects(layout)
    markers = read_markers(layout)

    samples_in = int(markers.get("ingest", {}).get("rows", 0))
    synthesized_ids = set()
    for table in (contents, rejects):
        if len(table):
            mask = pc.starts_with(pc.fill_null(table.column("origin"), ""), "synthesized")
            synthesized_ids.update(table.filter(mask).column("id").to_pylist())
    rejected, by_stage = reject_counts(rejects)

    budgets = index["budgets"]
    totals = index["totals"]
    sequences = totals["sequences"]
    copies = contents.column("copies").to_numpy() if len(contents) else []
    modalities: dict[str, int] = {}
    for m in contents.column("modality").to_pylist():
        modalities[m] = modalities.get(m, 0) + 1
    samples_out = len(contents)
    stats = {
        "samples_in": samples_in,
        "synthesized": len(synthesized_ids),
        "samples_out": samples_out,
        "repeats": int(sum(copies) - samples_out) if samples_out else 0,
        "rejected": rejected,
        "rejected_by_stage": by_stage,
        "shards": len(index["shards"]),
        "sequences": sequences,
        "tokens": totals["tokens"],
        "tiles": totals["tiles"],
        "bytes": totals["bytes"],
        "token_fill": round(totals["tokens"] / (sequences * budgets["max_tokens"]), 4) if sequences else 0.0,
        "tile_fill": round(totals["tiles"] / (sequences * budgets["max_tiles"]), 4) if sequences else 0.0,
        "modalities": dict(sorted(modalities.items())),
        "budgets": budgets,
        "stage_seconds": {name: m["seconds"] for name, m in markers.items()},
    }
    download = download_summary(layout)
    if download:
        seconds = stats["stage_seconds"].get("download")
        download["urls_per_second"] = round(download["urls"] / seconds, 2) if seconds else None
        stats["download"] = download
    if "pack_plan" in markers:
        stats["packing"] = markers["pack_plan"].get("packing", {})  # mode, lower bound, sequences / lower bound
    if "pack_select" in markers:
        stats["select"] = markers["pack_select"].get("select", {})  # over-budget samples split / truncated / rejected
    not_eligible = not_eligible_of(markers)
    if not_eligible:  # passed through untouched, e.g. audio_qa: {"no Chinese voice": 12}
        stats["not_eligible"] = not_eligible
    stats["invariant_ok"] = (stats["samples_in"] + stats["synthesized"]
                             == stats["samples_out"] + sum(rejected.values()))
    return stats


def not_eligible_of(markers: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Stage -> reason -> samples the stage left untouched because they were not eligible."""
    return {name: dict(m["not_eligible"]) for name, m in markers.items() if m.get("not_eligible")}


def read_rejects(layout: RunLayout) -> pa.Table:
    """Every stage's rejects in one table (an empty one with the counted columns when none)."""
    folder = layout.rejects_dir
    tables = [pq.read_table(p) for p in sorted(folder.glob("*.parquet"))] if folder.exists() else []
    tables = [t for t in tables if len(t)]
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "origin": pa.array([], pa.string()),
                         "source": pa.array([], pa.string()), "reject_stage": pa.array([], pa.string()),
                         "reject_reason": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="default")


def reject_counts(rejects: pa.Table) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(reason -> count, most first; stage -> reason -> count): the one place rejects are counted."""
    rejected: dict[str, int] = {}
    by_stage: dict[str, dict[str, int]] = {}
    for r in rejects.select(["reject_stage", "reject_reason"]).to_pylist():
        rejected[r["reject_reason"]] = rejected.get(r["reject_reason"], 0) + 1
        stage = by_stage.setdefault(r["reject_stage"], {})
        stage[r["reject_reason"]] = stage.get(r["reject_reason"], 0) + 1
    return dict(sorted(rejected.items(), key=lambda kv: -kv[1])), by_stage


def read_markers(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """stage name -> its marker, for the stages that have finished."""
    out = {}
    for path in layout.markers() if layout.work.exists() else []:
        m = read_marker(path.parent)
        if m and "stage" in m:
            out[m["stage"]] = m
    return out


def partial_stats(layout: RunLayout) -> dict[str, Any]:
    """The funnel as far as a run got (no shards yet): samples in, rejected, still alive."""
    markers = read_markers(layout)
    rejected, by_stage = reject_counts(read_rejects(layout))
    stats = {"samples_in": int(markers.get("ingest", {}).get("rows", 0)), "synthesized": 0, "samples_out": 0,
             "repeats": 0, "rejected": rejected, "rejected_by_stage": by_stage, "shards": 0, "sequences": 0,
             "tokens": 0, "tiles": 0, "modalities": {}, "stage_seconds": {n: m["seconds"] for n, m in markers.items()},
             "invariant_ok": None, "partial": True}
    download = download_summary(layout)
    if download:
        stats["download"] = download
    return stats


def download_summary(layout: RunLayout) -> dict[str, Any] | None:
    """The download section, from the per-URL logs of the download stage (None: no fetches)."""
    folder = layout.download_logs
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return None
    log = pa.concat_tables([pq.read_table(p) for p in files]).to_pylist()
    latest: dict[str, dict[str, Any]] = {}
    for entry in sorted(log, key=lambda e: e["finished"]):
        latest[entry["url"]] = entry  # a URL retried in a later run counts once, as it ended
    ok = [e for e in latest.values() if e["status"] == "ok"]
    failures: dict[str, int] = {}
    for e in latest.values():
        if e["status"] != "ok":
            failures[e["reason"]] = failures.get(e["reason"], 0) + 1
    fetch_seconds = sum(e["elapsed"] for e in log)
    total_bytes = sum(e["bytes"] for e in ok)
    return {
        "urls": len(latest), "fetched": len(ok), "failed": len(latest) - len(ok),
        "success_rate": round(len(ok) / len(latest), 4) if latest else 0.0,
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
        "bytes": total_bytes, "requests": sum(e["attempts"] for e in log),
        "fetch_seconds": round(fetch_seconds, 3),
        "mb_per_fetch_second": round(total_bytes / 1e6 / fetch_seconds, 3) if fetch_seconds else 0.0,
    }


def _pipeline_order(stats: dict[str, Any], stage: str) -> int:
    """Position of a reject stage in the run (`pack` rejects come from the pack_* steps)."""
    names = list(stats.get("stage_seconds") or {})
    return next((i for i, n in enumerate(names) if n == stage or n.startswith(stage + "_")), len(names))


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"samples in      {stats['samples_in']:>10,}",
        f"synthesized     {stats['synthesized']:>10,}",
        f"samples out     {stats['samples_out']:>10,}   (+{stats['repeats']:,} repeats)",
        f"rejected        {sum(stats['rejected'].values()):>10,}",
    ]
    by_stage = stats.get("rejected_by_stage") or {}
    if by_stage:  # one line per stage keeps the table short (the report has the details)
        lines += [f"  {stage:<14}" + ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
                  for stage, reasons in sorted(by_stage.items(), key=lambda kv: _pipeline_order(stats, kv[0]))]
    else:
        lines += [f"  {reason:<28}{n:>8,}" for reason, n in stats["rejected"].items()]
    for stage, reasons in (stats.get("not_eligible") or {}).items():
        lines.append(f"not eligible    {stage}: " + ", ".join(f"{r} {n:,}" for r, n in reasons.items())
                     + " (passed through)")
    lines += [
        f"invariant       {'ok' if stats['invariant_ok'] else 'BROKEN'} (in + synthesized = out + rejected)",
        f"shards          {stats['shards']:>10,}",
        f"sequences       {stats['sequences']:>10,}",
        f"token fill      {stats['token_fill']:>10.1%}   of {stats['budgets']['max_tokens']} per sequence",
        f"tile fill       {stats['tile_fill']:>10.1%}   of {stats['budgets']['max_tiles']} per sequence",
        "modalities      " + ", ".join(f"{k} {v}" for k, v in stats["modalities"].items()),
    ]
    download = stats.get("download")
    if download:
        lines.append(f"download        {download['fetched']:,}/{download['urls']:,} URLs ok "
                     f"({download['success_rate']:.1%}), "
                     f"{download['bytes'] / 1e6:,.1f} MB, {download['requests']:,} requests"
                     + (f", {download['urls_per_second']} URLs/s" if download.get("urls_per_second") else "")
                     + ("; failed: " + ", ".join(f"{r} {n:,}" for r, n in download["failures"].items())
                        if download["failures"] else ""))
    packing, select = stats.get("packing") or {}, stats.get("select") or {}
    if packing:
        line = (f"packing         {packing['mode']}: {packing['sequences']:,} sequences, lower bound "
                f"{packing['lower_bound']:,} (x{packing['over_lower_bound']:.4f})")
        if "partition_loss" in packing:
            line += f", {packing['partitions']} partitions cost {packing['partition_loss']:+.2%} vs one"
        lines.append(line)
        mix = packing.get("mixture") or {}
        if mix.get("achieved"):
            lines.append("mix (copies)    " + ", ".join(
                f"{m} {share:.1%}" + (f" (target {mix['target'][m]:.0%})" if m in mix.get("target", {}) else "")
                for m, share in mix["achieved"].items()))
    if select.get("over_budget"):
        lines.append(f"over budget     {select['over_budget']:>10,}   split {select['split']} "
                     f"(+{select['parts_added']} parts), truncated {select['truncated']}, "
                     f"rejected {select['rejected']}")
    lines += [
        "stage seconds   " + ", ".join(f"{k} {v:.1f}" if k not in stats.get("resumed_stages", ()) else
                                       f"{k} (done before)" for k, v in stats["stage_seconds"].items()),
    ]
    return "\n".join(lines)
