"""Chinese prose: near-duplicate recall/precision and repetition-filter recall/false alarms.

Needs real Chinese paragraphs, one per line, in the file named by ZH_PROSE (default
/tmp/zh_prose.txt); nothing is shipped in the repository. Without the file it says so and
returns. We measured on the Chinese edition of Dive into Deep Learning (d2l-ai/d2l-zh,
chapter markdown with code, math and markup stripped, paragraphs of >= 40 Han characters).

1. Near duplicates. The pool is first cleaned of the book's own near duplicates (its
   framework variants repeat paragraphs with one API name changed): a paragraph whose
   character-bigram Jaccard with an earlier one is >= 0.5 is left out, so every pair found
   below is either a planted copy or a false positive. ZH_COPIES paragraphs (default 400)
   get one near copy each: half insert one word (2-4 characters from a list of common
   adverbs and connectives) at a random character, half insert one clause (a real clause
   of 6-20 characters cut from another paragraph, with its comma) at a random clause
   boundary. All paragraphs and copies go through `near_duplicate_clusters` (the stage's
   code: text_units, one-permutation MinHash, LSH, exact-Jaccard verification) at the
   recipe's default threshold and shingle size. Recall = planted pairs in one cluster;
   precision = planted pairs / all same-cluster pairs.
2. Repetition. 60 paragraphs get a loop, as model output loops: the last sentence
   repeated to the end, a short phrase repeated without punctuation, two sentences
   alternating, a clause repeated with commas, a line repeated on new lines, and a
   sentence repeated with a changing number (six kinds, 10 each). They and 120 other
   clean paragraphs go through the filter stage's repetition detector (`repetition_signals`,
   default thresholds, reject at score >= 0.5). False alarms are also counted on every
   clean paragraph of the pool, and for the heuristic rules.

    ZH_PROSE=/tmp/zh_prose.txt python -m tests.bench bench_zh
"""

from __future__ import annotations

import itertools
import os
import random
import re
from pathlib import Path

import numpy as np

PROSE = Path(os.environ.get("ZH_PROSE", "/tmp/zh_prose.txt"))
N_COPIES = int(os.environ.get("ZH_COPIES", "400"))
N_LOOPS, N_CLEAN = 60, 120
WORDS = ["确实", "通常", "其实", "显然", "一般来说", "实际上", "往往", "非常", "尤其", "同样", "基本上", "大致"]
CLAUSE = re.compile(r"[^，。；：！？、（）]{6,20}")


def load(path: Path = PROSE) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def jaccard_matrix(sets: list[set]) -> np.ndarray:
    """All-pairs Jaccard of sets (one sparse product; fine for a few thousand)."""
    from scipy import sparse

    vocab: dict = {}
    cols = [[vocab.setdefault(g, len(vocab)) for g in s] for s in sets]
    rows = [i for i, c in enumerate(cols) for _ in c]
    m = sparse.csr_matrix((np.ones(len(rows)), (rows, [j for c in cols for j in c])), shape=(len(sets), len(vocab)))
    inter = (m @ m.T).toarray()
    size = np.array([len(s) for s in sets])
    return inter / np.maximum(size[:, None] + size[None, :] - inter, 1)


def distinct_pool(texts: list[str], max_jaccard: float = 0.5) -> list[str]:
    """Paragraphs whose character-bigram Jaccard with every earlier kept one is below max_jaccard."""
    jac = jaccard_matrix([{t[i:i + 2] for i in range(len(t) - 1)} for t in texts])
    kept: list[int] = []
    for i in range(len(texts)):
        if all(jac[i, k] < max_jaccard for k in kept):
            kept.append(i)
    return [texts[i] for i in kept]


def insert_word(text: str, rng: random.Random) -> str:
    at = rng.randrange(1, len(text))
    return text[:at] + rng.choice(WORDS) + text[at:]


def insert_clause(text: str, donor: str, rng: random.Random) -> str:
    """A whole clause of the donor (text between two punctuation marks, 4-20 characters) and a comma."""
    clauses = [c for c in re.split(r"[，。；：！？]", donor) if 4 <= len(c) <= 20] or ["这一点在实践中很重要"]
    clause = rng.choice(clauses)
    cuts = [m.end() for m in re.finditer("[，。；]", text[:-1])] or [len(text) - 1]
    at = rng.choice(cuts)
    return text[:at] + clause + "，" + text[at:]


def same_cluster_pairs(labels: list[int]) -> set[tuple[int, int]]:
    clusters: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        clusters.setdefault(c, []).append(i)
    return {p for members in clusters.values() for p in itertools.combinations(sorted(members), 2)}


def near_duplicates(pool: list[str], rng: random.Random) -> dict[str, float]:
    from curate.dedup.shingles import text_units
    from curate.recipe import DedupeConfig
    from curate.stages.dedupe import near_duplicate_clusters

    cfg = DedupeConfig()
    picked = rng.sample(range(len(pool)), min(N_COPIES, len(pool)))
    copies = []
    for k, i in enumerate(picked):
        if k % 2 == 0:
            copies.append(insert_word(pool[i], rng))
        else:
            copies.append(insert_clause(pool[i], pool[(i + 1 + rng.randrange(len(pool) - 1)) % len(pool)], rng))
    texts = pool + copies
    labels = near_duplicate_clusters(texts, cfg.threshold, threshold_cjk=cfg.threshold_cjk,
                                     num_perm=cfg.num_perm, shingle=cfg.shingle)
    found = same_cluster_pairs(labels)
    planted = {(i, len(pool) + k) for k, i in enumerate(picked)}
    # for comparison: Chinese held to the English threshold
    as_english = same_cluster_pairs(near_duplicate_clusters(texts, cfg.threshold, threshold_cjk=cfg.threshold,
                                                            num_perm=cfg.num_perm, shingle=cfg.shingle))
    hit = len(found & planted)
    word = sum((i, len(pool) + k) in found for k, i in enumerate(picked) if k % 2 == 0)
    _, hashes = text_units(pool, cfg.shingle)
    jac = jaccard_matrix([set(h.tolist()) for h in hashes])
    np.fill_diagonal(jac, 0)
    return {"paragraphs": len(pool), "copies": len(planted), "recall": hit / len(planted),
            "threshold": cfg.threshold, "threshold_cjk": cfg.threshold_cjk,
            "recall_at_threshold": len(as_english & planted) / len(planted), "max_distinct": float(jac.max()),
            "recall_word": word / len(picked[::2]), "recall_clause": (hit - word) / len(picked[1::2]),
            "precision": hit / max(1, len(found)), "false_pairs": len(found - planted)}


# ------------------------------------------------------------------------------ loops
def split_sentences(text: str) -> list[str]:
    return [s for s in re.findall(r"[^。！？]*[。！？]", text) if len(s) >= 6] or [text]


def make_loop(text: str, kind: int, rng: random.Random) -> str:
    sents = split_sentences(text)
    if kind == 0:  # the last sentence repeated until the token budget runs out
        return text + sents[-1] * rng.randint(6, 15)
    if kind == 1:  # a short phrase repeated with no punctuation at all
        start = rng.randrange(max(1, len(text) - 8))
        phrase = re.sub(r"[^\u4e00-\u9fff]", "", text[start:start + rng.randint(3, 8)]) or "模型"
        return text[: len(text) // 2] + phrase * rng.randint(10, 30)
    if kind == 2:  # two sentences alternating
        a, b = (sents + sents)[:2] if len(sents) < 2 else rng.sample(sents, 2)
        return text + (a + b) * rng.randint(4, 8)
    if kind == 3:  # one clause repeated with commas
        clause = rng.choice(CLAUSE.findall(text) or [text[:10]])
        return text[:-1] + "，" + "，".join([clause] * rng.randint(6, 14)) + "。"
    if kind == 4:  # one line repeated on new lines
        return text + "\n" + "\n".join([sents[0]] * rng.randint(5, 10))
    # a sentence repeated with a number that counts up (repetition with variation)
    s = sents[rng.randrange(len(sents))].rstrip("。！？")
    return text + "".join(f"第{j}步，{s}。" for j in range(1, rng.randint(6, 12)))


def repetition(pool: list[str], rng: random.Random) -> dict[str, float]:
    from filters import heuristics
    from filters.repetition import fired, repetition_signals

    order = rng.sample(range(len(pool)), N_LOOPS + N_CLEAN)
    loops = [make_loop(pool[i], k % 6, rng) for k, i in enumerate(order[:N_LOOPS])]
    clean = [pool[i] for i in order[N_LOOPS:]]
    hits = [repetition_signals(t)["score"] >= 0.5 for t in loops]
    missed = [(k % 6, loops[k][-80:]) for k, h in enumerate(hits) if not h]
    alarms = [(t, fired(repetition_signals(t))) for t in clean if repetition_signals(t)["score"] >= 0.5]
    every = [t for t in pool if repetition_signals(t)["score"] >= 0.5]
    rules = [t for t in pool if heuristics.check([{"from": "human", "value": "请解释。"},
                                                  {"from": "gpt", "value": t}])]
    return {"loops": len(loops), "recall": sum(hits) / len(loops), "clean": len(clean),
            "false_alarms": len(alarms),
            "pool": len(pool), "pool_false_alarms": len(every), "rule_false_alarms": len(rules),
            "missed": missed, "alarms": alarms}


def main() -> None:
    if not PROSE.is_file():
        print(f"skipped: no Chinese prose at {PROSE} (one paragraph per line; set ZH_PROSE). "
              "We used paragraphs of d2l-ai/d2l-zh, see this file's docstring.")
        return
    rng = random.Random(0)
    pool = distinct_pool(load())
    dup = near_duplicates(pool, rng)
    print(f"near duplicates: {dup['copies']} near copies among {dup['paragraphs']} distinct paragraphs: "
          f"recall {dup['recall']:.3f} (one word {dup['recall_word']:.3f}, one clause {dup['recall_clause']:.3f}), "
          f"precision {dup['precision']:.4f} ({dup['false_pairs']} false pairs) at threshold_cjk "
          f"{dup['threshold_cjk']}; highest Jaccard of two distinct paragraphs {dup['max_distinct']:.3f}; "
          f"recall at the English threshold {dup['threshold']} would be "
          f"{dup['recall_at_threshold']:.3f}")
    rep = repetition(pool, rng)
    print(f"repetition: recall {rep['recall']:.3f} on {rep['loops']} loops; {rep['false_alarms']} false alarms "
          f"in {rep['clean']} clean paragraphs; {rep['pool_false_alarms']} in all {rep['pool']}; "
          f"heuristic rules fire on {rep['rule_false_alarms']} of {rep['pool']}")
    for kind, tail in rep["missed"]:
        print(f"  missed loop kind {kind}: ...{tail!r}")
    for text, signals in rep["alarms"]:
        print(f"  false alarm {signals}: {text[:80]!r}")


if __name__ == "__main__":
    main()
