"""Near-duplicate text benchmark: MB/s per core and peak memory, against a plain
datasketch MinHash + MinHashLSH loop in the same run.

Corpus: synthetic documents of ~1 KB (Zipf-distributed words) with 10% near duplicates
(one word changed). `near_duplicate_clusters` runs on all of them; the datasketch loop
(MinHash.update_batch per document, MinHashLSH query + insert) on a prefix, because it is
slow; throughput is compared per MB. Each measurement runs in a forked child process so
its peak RSS is its own. Size: DEDUPE_BENCH_DOCS (default 200000).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time

import numpy as np

N_DOCS = int(os.environ.get("DEDUPE_BENCH_DOCS", "200000"))
BASELINE_DOCS = min(N_DOCS, 10_000)


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    ranks = np.minimum(rng.zipf(1.3, size=n * 160), len(vocab)) - 1
    words = vocab[ranks].reshape(n, 160)
    docs = [" ".join(row) for row in words]
    for i in range(0, n, 10):  # every tenth document: a near copy of the previous one
        if i:
            w = docs[i - 1].split()
            w[len(w) // 2] = "changed"
            docs[i] = " ".join(w)
    return docs


def ours(texts: list[str]) -> int:
    from curate.stages.dedupe import near_duplicate_clusters

    labels = near_duplicate_clusters(texts, 0.8)
    return len(texts) - len(set(labels))


def datasketch_loop(texts: list[str], batch: bool = True) -> int:
    """The straightforward loop: a MinHash per document, MinHashLSH query then insert."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    dups = 0
    for i, t in enumerate(texts):
        words = t.lower().split()
        shingles = [" ".join(words[j:j + 5]).encode() for j in range(len(words) - 4)]
        m = MinHash(num_perm=128)
        if batch:
            m.update_batch(shingles)
        else:
            for sh in shingles:
                m.update(sh)
        if lsh.query(m):
            dups += 1
        lsh.insert(str(i), m)
    return dups


def datasketch_per_shingle(texts: list[str]) -> int:
    return datasketch_loop(texts, batch=False)


def _child(fn, texts, conn) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    found = fn(texts)
    seconds = time.perf_counter() - t0
    conn.send((found, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before))


def measure(fn, texts):
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_child, args=(fn, texts, child))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def main() -> None:
    from curate.dedup.lsh import lsh_params

    lsh_params(0.8, 128)  # warm caches shared by the forked children
    texts = corpus(N_DOCS)
    mb = sum(len(t) for t in texts) / 1e6
    base = texts[:BASELINE_DOCS]
    base_mb = sum(len(t) for t in base) / 1e6
    print(f"corpus: {N_DOCS:,} docs, {mb:.1f} MB (baseline on the first {BASELINE_DOCS:,}: {base_mb:.1f} MB)")
    found_b, sec_b, rss_b = measure(datasketch_loop, base)
    small = texts[:3000]
    small_mb = sum(len(t) for t in small) / 1e6
    found_s, sec_s, _ = measure(datasketch_per_shingle, small)
    found_o_small, sec_o_small, _ = measure(ours, base)
    found_o, sec_o, rss_o = measure(ours, texts)
    print(f"{'method':<44} {'docs':>8} {'dups':>7} {'MB/s':>7} {'peak MB':>8} {'x base':>7}")
    print(f"{'datasketch MinHash.update_batch + MinHashLSH':<44} {len(base):>8,} {found_b:>7,} "
          f"{base_mb / sec_b:>7.2f} {rss_b / 1024:>8.0f} {1.0:>7.2f}")
    print(f"{'datasketch MinHash.update per shingle':<44} {len(small):>8,} {found_s:>7,} "
          f"{small_mb / sec_s:>7.2f} {'':>8} {(small_mb / sec_s) / (base_mb / sec_b):>7.2f}")
    print(f"{'near_duplicate_clusters (same docs)':<44} {len(base):>8,} {found_o_small:>7,} "
          f"{base_mb / sec_o_small:>7.2f} {'':>8} {(base_mb / sec_o_small) / (base_mb / sec_b):>7.2f}")
    print(f"{'near_duplicate_clusters (whole corpus)':<44} {len(texts):>8,} {found_o:>7,} "
          f"{mb / sec_o:>7.2f} {rss_o / 1024:>8.0f} {(mb / sec_o) / (base_mb / sec_b):>7.2f}")
    print("one process, one core; MB/s of text; peak MB = growth of the child's max RSS")


if __name__ == "__main__":
    main()
