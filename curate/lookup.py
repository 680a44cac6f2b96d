"""Find a sample in a run folder, and show packed sequences the way a person reads them.

`find_sample`: by the pipeline's id or the manifest's own id (`orig_id`), where did it go:
which shard, sequence and token offset, or which stage rejected it and why, and the same for
its synthesized children (`<orig_id>#audio_qa`, split parts `<orig_id>#k`).

`describe_sequence`: one packed sequence as turns with their roles and text, runs of media
tokens collapsed (`<IMG_CONTEXT> x 256 (tile 3/7)`), trained (label) spans marked, and the
media members with their sizes. Both read the shards with packing.format's tar reader.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.layout import RunLayout
from packing.format import (
    AUDIO_CONTEXT,
    IDS_MEMBER,
    IGNORE,
    IM_END,
    IM_START,
    IMG_CONTEXT,
    JSON_MEMBER,
    LABELS_MEMBER,
    MEDIA_MEMBER,
    media_files,
    read_members,
    scan_shard,
)

TRAINED_OPEN, TRAINED_CLOSE = "«", "»"  # around text the loss is computed on


# ---------------------------------------------------------------------------- find
def _matches(table: pa.Table, query: str) -> pa.Table:
    """Rows whose id or orig_id is `query`, or whose orig_id is a child of it (`query#...`)."""
    if not len(table):
        return table
    mask = pc.equal(table.column("id"), query)
    if "orig_id" in table.column_names:
        orig = pc.fill_null(table.column("orig_id"), "")
        mask = pc.or_(mask, pc.or_(pc.equal(orig, query), pc.starts_with(orig, query + "#")))
    return table.filter(pc.fill_null(mask, False))


def iter_shard_samples(shard_dir: Path) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(shard name, sequence key, sequence JSON, sample entry) for every packed sample copy."""
    for tar_path in sorted(shard_dir.glob("*.tar")):
        for key, _, seq in scan_shard(tar_path):
            for s in seq["samples"]:
                yield tar_path.name, key, seq, s


def find_sample(run_dir: str | Path, query: str) -> dict[str, Any]:
    """Where `query` (an id or a manifest id) ended up: {"query", "placed": [...], "rejected": [...]}."""
    layout = RunLayout.of(run_dir)
    placed_ids: set[str] = set()
    if layout.contents.exists():
        placed_ids = set(_matches(pq.read_table(layout.contents), query).column("id").to_pylist())
    placed = []
    if placed_ids:
        for shard, key, seq, s in iter_shard_samples(layout.shards):
            if s["id"] in placed_ids:
                placed.append({"id": s["id"], "orig_id": s.get("orig_id"), "source": s["source"],
                               "modality": s["modality"], "shard": shard, "key": key,
                               "sequence": seq["sequence"], "token_offset": s["token_offset"],
                               "n_tokens": s["n_tokens"], "n_tiles": s["n_tiles"]})
    rejected = []
    folder = layout.rejects_dir
    for path in sorted(folder.glob("*.parquet")) if folder.exists() else []:
        for r in _matches(pq.read_table(path), query).to_pylist():
            rejected.append({k: r.get(k) for k in ("id", "orig_id", "source", "modality", "manifest", "line",
                                                   "reject_stage", "reject_reason", "reject_detail")})
    return {"query": query, "placed": placed, "rejected": rejected}


def format_found(found: dict[str, Any]) -> str:
    lines = []
    for p in found["placed"]:
        lines.append(f"{p['orig_id'] or p['id']}  in {p['shard']} sequence {p['sequence']} (key {p['key']}), "
                     f"token offset {p['token_offset']}, {p['n_tokens']} tokens, {p['n_tiles']} tiles "
                     f"[{p['source']}/{p['modality']}, id {p['id']}]")
    for r in found["rejected"]:
        where = f"{Path(r['manifest']).name}:{r['line']}" if r.get("manifest") else ""
        lines.append(f"{r['orig_id'] or r['id']}  rejected at {r['reject_stage']}: {r['reject_reason']}"
                     f" ({(r['reject_detail'] or '')[:200]}) [{r['source']}, {where}, id {r['id']}]")
    return "\n".join(lines) if lines else f"{found['query']}: not found in the shards or the rejects"


# ---------------------------------------------------------------------------- inspect
def read_sequences(shard: str | Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Packed sequences of one shard: key, JSON, input_ids, labels and member sizes (no decoding)."""
    for key, members, meta in itertools.islice(scan_shard(shard), limit):
        current: dict[str, Any] = {"key": key, "members": {}}
        for ext, data in read_members(shard, members).items():
            current["members"][ext] = len(data)
            if ext == MEDIA_MEMBER:  # the sequence's files inside one msgpack member
                for name, file in media_files(data).items():
                    current["members"][name] = len(file)
            elif ext == JSON_MEMBER:
                current["meta"] = meta
            elif ext in (IDS_MEMBER, LABELS_MEMBER):
                current[ext.split(".")[0]] = np.load(io.BytesIO(data), allow_pickle=False)
        yield current


def _media_runs(ids: list[int], context_ids: dict[int, str]) -> list[tuple[int, int, str]]:
    """[start, end, token) of each run of one media context token."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] in context_ids:
            j = i
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            runs.append((i, j, context_ids[ids[i]]))
            i = j
        else:
            i += 1
    return runs


def describe_sample(sample: dict[str, Any], ids: np.ndarray, labels: np.ndarray, tok: Any | None,
                    members: dict[str, int]) -> dict[str, Any]:
    """One packed sample as turns (role, text with media runs collapsed and trained spans marked)."""
    start, n = sample["token_offset"], sample["n_tokens"]
    sid, slab = ids[start:start + n].tolist(), labels[start:start + n].tolist()
    out = {k: sample.get(k) for k in ("orig_id", "id", "source", "modality", "token_offset", "n_tokens",
                                        "n_tiles", "n_response_tokens")}
    out["media"] = []
    for m in sample.get("media") or []:
        names = m.get("frames") or ([m["member"]] if m.get("member") else [])
        out["media"].append({"kind": m["kind"], "members": names, "bytes": sum(members.get(x, 0) for x in names),
                             **{k: m[k] for k in ("grid", "tiles", "size", "duration") if k in m}})
    if tok is None:
        out["turns"] = []
        return out
    special = {tok.convert_tokens_to_ids(t): t for t in (IMG_CONTEXT, AUDIO_CONTEXT)}
    im_start, im_end = tok.convert_tokens_to_ids(IM_START), tok.convert_tokens_to_ids(IM_END)
    # tiles of each image / frame in order, to number the collapsed IMG_CONTEXT runs
    tiles = [m.get("tiles") or 1 if m["kind"] == "image" else 1
             for m in sample.get("media") or [] if m["kind"] != "audio"
             for _ in (m.get("frames") or [None])]
    image_no = 0
    runs = {s: (e, t) for s, e, t in _media_runs(sid, special)}
    turns: list[dict[str, Any]] = []
    i = 0
    while i < len(sid):
        if sid[i] == im_start:
            turns.append({"role": None, "text": "", "trained_tokens": 0})
            i += 1
            continue
        if not turns:
            turns.append({"role": "", "text": "", "trained_tokens": 0})
        turn = turns[-1]
        if i in runs:
            end, name = runs[i]
            count = end - i
            if name == IMG_CONTEXT and image_no < len(tiles):
                total = tiles[image_no]
                per = count // total if total and count % total == 0 else count
                label = (f"{name} x {count}" + (f" ({total} tiles x {per})" if per != count else "")
                         + f" (image/frame {image_no + 1}/{len(tiles)})")
                image_no += 1
            else:
                label = f"{name} x {count}"
            turn["text"] += f"[{label}]"
            i = end
            continue
        j = i  # a run of plain tokens with the same trained flag
        trained = slab[i] != IGNORE
        while j < len(sid) and j not in runs and sid[j] not in (im_start,) and (slab[j] != IGNORE) == trained:
            j += 1
        piece_ids = [t for t in sid[i:j] if t != im_end]
        text = tok.decode(piece_ids) if piece_ids else ""
        if turn["role"] is None:
            role, _, text = text.partition("\n")
            turn["role"] = role.strip()
        if trained:
            turn["trained_tokens"] += j - i
            text = f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if text else ""
        turn["text"] += text
        i = j
    out["turns"] = [t | {"text": t["text"].strip()} for t in turns]
    return out


def format_sample(d: dict[str, Any], width: int = 160) -> list[str]:
    lines = [(f"  {d['orig_id'] or d['id']}  {d['source']}/{d['modality']}: {d['n_tokens']} tokens at offset "
              f"{d['token_offset']}, {d['n_tiles']} tiles, {d['n_response_tokens']} trained tokens (id {d['id']})")]
    for m in d["media"]:
        extra = ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("kind", "members", "bytes"))
        members = m["members"] if len(m["members"]) <= 3 else m["members"][:2] + [f"... {len(m['members'])} frames"]
        lines.append(f"    {m['kind']}: {', '.join(members)} ({m['bytes']:,} bytes{', ' + extra if extra else ''})")
    for t in d["turns"]:
        text = " ".join(t["text"].split())
        if len(text) > width:
            text = text[: width - 3] + "..."
        lines.append(f"    {t['role'] or '?':>9}: {text}")
    return lines


def find_tokenizer(shard: str | Path) -> str | None:
    """The tokenizer the run used (its recipe.resolved.yaml), when the folder still exists."""
    import yaml

    run = Path(shard).resolve().parent.parent
    recipe = RunLayout(run).recipe
    if not recipe.exists():
        return None
    path = (yaml.safe_load(recipe.read_text()).get("stages", {}).get("tokenize", {}) or {}).get("tokenizer")
    if not path:
        return None
    for candidate in (Path(path), run / path, run.parent / path, run.parent.parent / path):
        if (candidate / "tokenizer_config.json").exists() or (candidate / "tokenizer.json").exists():
            return str(candidate)
    return None
