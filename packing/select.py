"""Select: make over-budget samples fit a packed sequence, or say why they cannot.

A tokenized record carries `turn_starts` (token offset of each conversation turn) and
`media_spans` (flattened [start, end) token offsets of each media item, in order), written
by the tokenize stage. A record over either budget (l_max tokens, t_max tiles) is:

1. split at turn boundaries (when `split`): the conversation is cut into rounds (a human
   turn and the replies after it); rounds are grouped greedily into parts that fit, and
   every part after the first repeats the system prefix (the tokens before the first human
   turn). A cut never falls inside a media span, because media sit inside turns.
2. truncated (when `truncate`): a round that alone is over budget is cut at the last token
   that fits, moved back to the start of a media span if the cut would fall inside one,
   and before the first media item that would break the tile budget.
3. otherwise unfit: select_row raises Unfit (reason `too_long`, the sizes in its message),
   which the pack_select stage turns into a reject.

A part with no trainable (label) token is useless and is dropped; if none is left the
record is unfit. The first part keeps the record's id; later parts get `<id>#<k>` and
origin `synthesized:pack`, so the run's counts still add up (samples in + synthesized = out + rejected).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from packing.format import IGNORE


@dataclass
class SelectCounts:
    """What the select step did, for the run report."""

    over_budget: int = 0
    split: int = 0
    parts_added: int = 0
    truncated: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"over_budget": self.over_budget, "split": self.split, "parts_added": self.parts_added,
                "truncated": self.truncated, "rejected": self.rejected}


def media_tiles(item: dict[str, Any]) -> int:
    if item["kind"] == "image":
        return int(item.get("tiles") or 0)
    if item["kind"] == "video":
        return len(item.get("frames") or [])
    return 0


def fits(row: dict[str, Any], max_tokens: int, max_tiles: int) -> bool:
    return int(row["n_tokens"]) <= max_tokens and int(row["n_tiles"]) <= max_tiles


def select_row(row: dict[str, Any], max_tokens: int, max_tiles: int, *, split: bool = True,
               truncate: bool = False, counts: SelectCounts | None = None) -> list[dict[str, Any]]:
    """Rows that fit both budgets (one or more parts); raises Unfit (counted as rejected) when
    no split or cut makes the row fit."""
    counts = counts if counts is not None else SelectCounts()
    if fits(row, max_tokens, max_tiles):
        return [row]
    counts.over_budget += 1
    try:
        parts, truncated = _make_parts(row, max_tokens, max_tiles, split, truncate)
    except Unfit:
        counts.rejected += 1
        raise
    counts.split += len(parts) > 1
    counts.parts_added += len(parts) - 1
    counts.truncated += truncated
    action = "+".join(a for a, on in (("split", len(parts) > 1), ("truncated", truncated)) if on) or "none"
    for k, part in enumerate(parts):  # provenance travels with the sample into the shard
        meta = json.loads(part.get("meta") or "{}")
        meta["select"] = {"action": action, "part": k + 1, "of": len(parts), "parent": row["id"]}
        part["meta"] = json.dumps(meta, sort_keys=True)
    return parts


def counts_from_meta(metas: list[str | None]) -> SelectCounts:
    """Rebuild the counts from the `select` provenance in selected rows' meta JSON."""
    counts = SelectCounts()
    for text in metas:
        sel = json.loads(text or "{}").get("select")
        if not sel or sel["part"] != 1:
            continue
        counts.split += "split" in sel["action"]
        counts.parts_added += sel["of"] - 1
        counts.truncated += "truncated" in sel["action"]
    return counts


class Unfit(Exception):
    """A row that cannot be made to fit: `reason` is its reject reason, the message the detail."""

    reason = "too_long"


def _make_parts(row: dict[str, Any], max_tokens: int, max_tiles: int, split: bool,
                truncate: bool) -> tuple[list[dict[str, Any]], int]:
    ids, labels = list(row["input_ids"]), list(row["labels"])
    n = len(ids)
    media = list(row.get("media") or [])
    spans = list(row.get("media_spans") or [])
    spans = [(spans[2 * k], spans[2 * k + 1]) for k in range(len(spans) // 2)]
    turns = list(row.get("conversations") or [])
    starts = list(row.get("turn_starts") or [])
    size = f"{n} tokens / {row['n_tiles']} tiles over the budgets {max_tokens} / {max_tiles}"
    if len(spans) != len(media) or len(starts) != len(turns):
        raise Unfit(f"{size}; the record lacks turn/media offsets (re-run tokenize)")
    humans = [j for j, t in enumerate(turns) if t["from"] == "human"]
    if not humans:
        raise Unfit(f"{size}; no human turn to split at")
    prefix_end = starts[humans[0]]
    if any(s < prefix_end for s, _ in spans):
        raise Unfit(f"{size}; media in the system prefix cannot be repeated in parts")
    # rounds: [token start, token end, first turn, end turn)
    bounds = [starts[j] for j in humans] + [n]
    rounds = [(bounds[r], bounds[r + 1], humans[r], humans[r + 1] if r + 1 < len(humans) else len(turns))
              for r in range(len(humans))]
    tiles_in = [sum(media_tiles(m) for m, (s, _) in zip(media, spans) if a <= s < b) for a, b, _, _ in rounds]
    groups: list[list[int]] = []
    if split:
        cur: list[int] = []
        cur_tok, cur_til = prefix_end, 0
        for r, (a, b, _, _) in enumerate(rounds):
            if cur and (cur_tok + b - a > max_tokens or cur_til + tiles_in[r] > max_tiles):
                groups.append(cur)
                cur, cur_tok, cur_til = [], prefix_end, 0
            cur.append(r)
            cur_tok += b - a
            cur_til += tiles_in[r]
        groups.append(cur)
    else:
        groups = [list(range(len(rounds)))]
    system_turns = turns[: humans[0]]
    parts: list[dict[str, Any]] = []
    truncated = 0
    for g in groups:
        a, b = rounds[g[0]][0], rounds[g[-1]][1]
        seg_media = [(m, s, e) for m, (s, e) in zip(media, spans) if a <= s < b]
        part_ids = ids[:prefix_end] + ids[a:b]
        part_labels = [IGNORE] * prefix_end + labels[a:b]
        shift = prefix_end - a
        seg_media = [(m, s + shift, e + shift) for m, s, e in seg_media]
        tiles = sum(media_tiles(m) for m, _, _ in seg_media)
        if len(part_ids) > max_tokens or tiles > max_tiles:
            if not truncate:
                raise Unfit(f"{size}; round(s) {g[0] + 1}..{g[-1] + 1} alone hold {len(part_ids)} tokens / "
                             f"{tiles} tiles (set stages.pack.truncate=true to cut them)")
            cut = max_tokens
            til = 0
            for m, s, e in seg_media:
                if e > cut or til + media_tiles(m) > max_tiles:
                    cut = min(cut, s)
                    break
                til += media_tiles(m)
            part_ids, part_labels = part_ids[:cut], part_labels[:cut]
            seg_media = [(m, s, e) for m, s, e in seg_media if e <= cut]
            truncated += 1
        if not any(lab != IGNORE for lab in part_labels):
            continue  # nothing to learn from this part
        first, end = rounds[g[0]][2], rounds[g[-1]][3]
        part_turns = system_turns + turns[first:end]
        part_starts = starts[: humans[0]] + [starts[j] + shift for j in range(first, end)]
        kept = [j for j, t in enumerate(part_starts) if t < len(part_ids)]  # truncation may drop turns
        parts.append(_part_row(row, len(parts), part_ids, part_labels, seg_media,
                               [part_turns[j] for j in kept], [part_starts[j] for j in kept]))
    if not parts:
        raise Unfit(f"{size}; no part with a trainable answer fits")
    return parts, min(truncated, 1)


def _part_row(row: dict[str, Any], k: int, ids: list[int], labels: list[int],
              seg_media: list[tuple[dict[str, Any], int, int]], turns: list[dict[str, Any]],
              turn_starts: list[int]) -> dict[str, Any]:
    out = copy.copy(row)
    if k:
        out["id"] = f"{row['id']}#{k}"
        out["orig_id"] = f"{row.get('orig_id') or row['id']}#{k}"
        out["origin"] = "synthesized:pack"
    out.update(
        input_ids=ids, labels=labels, n_tokens=len(ids),
        n_tiles=sum(media_tiles(m) for m, _, _ in seg_media),
        n_audio_tokens=sum(e - s - 2 for m, s, e in seg_media if m["kind"] == "audio"),
        n_response_tokens=sum(lab != IGNORE for lab in labels),
        media=[m for m, _, _ in seg_media], media_spans=[x for _, s, e in seg_media for x in (s, e)],
        conversations=turns, turn_starts=turn_starts,
    )
    return out
