"""`make bench-load ROWS=1000000`: the whole pipeline on generated corpora, per stage.

Two corpora are generated on the fly into a temporary folder (never committed):
- low-overlap: ROWS text QA rows of about 1.2 KB (Zipf-distributed words of the Python
  documentation vocabulary), 5% exact copies (case and spacing changed) and 5% near copies
  (two words changed), plus ROWS/20 image QA rows over 256 generated JPEGs;
- duplicate-heavy: the same, except that half of the text rows fall into clusters of 2,000
  near copies of one text (one word changed each): templates, boilerplate, mirrored pages.

Each corpus runs through `curate run` (model stages off, the object store capped) in a child
process while this process samples the memory in use (MemTotal - MemAvailable from
/proc/meminfo, so Ray's shared object store counts once) every 0.2 s. Per stage it prints
rows/s per core, MB/s per core (conversation text bytes of the stage's input rows), the peak
memory in use during the stage and that peak minus the memory in use before the run (the
machine may be shared). The end-to-end line covers the whole `curate run` (Ray start included).

Side by side (when `datatrove` is installed): DataTrove's Gopher repetition + quality filters
and its four MinHash deduplication steps (local executor, 2 tasks) on the same text rows,
against our filter and dedupe stages, per core. Settings: BENCH_LOAD_ROWS (default 20000),
BENCH_LOAD_CORPORA (low,heavy), BENCH_LOAD_DATATROVE (1), BENCH_LOAD_OBJECT_STORE (bytes,
default 2 GiB), BENCH_LOAD_KEEP (a folder to keep the corpora and runs in).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROWS = int(os.environ.get("BENCH_LOAD_ROWS", "20000"))
CORPORA = os.environ.get("BENCH_LOAD_CORPORA", "low,heavy").split(",")
OBJECT_STORE = int(os.environ.get("BENCH_LOAD_OBJECT_STORE", str(2 * 1024**3)))
CLUSTER = 2000  # near copies per cluster in the duplicate-heavy corpus
N_IMAGES = 256
MODEL_STAGES_OFF = ["stages.transcribe.enabled=false", "stages.audio_qa.enabled=false",
                    "stages.score.enabled=false"]


# ----------------------------------------------------------------------------- corpora
def vocabulary(seed: int = 0) -> list[str]:
    """The words of the Python documentation topics, in a random (seeded) frequency order."""
    from curate.demo import prose_topics

    words = sorted({w.lower() for _, body in prose_topics() for w in re.findall(r"[A-Za-z]{2,}", body)})
    return [words[i] for i in np.random.default_rng(seed).permutation(len(words))]


def _texts(rng: np.random.Generator, vocab: list[str], n: int, words: int = 150) -> list[str]:
    """n answers of ~1.2 KB: Zipf-Mandelbrot words (p ~ 1/(rank + 10)), a sentence end every 8-20 words."""
    p = 1.0 / (np.arange(len(vocab)) + 10.0)
    idx = rng.choice(len(vocab), size=(n, words), p=p / p.sum()).tolist()
    out = []
    for row, cut in zip(idx, rng.integers(8, 20, size=n).tolist()):
        ws = [vocab[i] for i in row]
        for j in range(cut, len(ws), cut):
            ws[j - 1] += "."
        ws[0] = ws[0].capitalize()
        out.append(" ".join(ws) + ".")
    return out


def _change(text: str, rng: np.random.Generator, k: int, vocab: list[str]) -> str:
    ws = text.split(" ")
    for j in rng.integers(0, len(ws), size=k).tolist():
        ws[j] = vocab[int(rng.integers(len(vocab)))]
    return " ".join(ws)


def generate(folder: Path, rows: int, heavy: bool, seed: int = 0) -> dict[str, object]:
    """Write text.jsonl and image.jsonl (+ images/) under folder; returns sizes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    vocab = vocabulary(seed)
    folder.mkdir(parents=True, exist_ok=True)
    text_bytes = 0
    chunk = 20_000
    with open(folder / "text.jsonl", "w") as f:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            answers = _texts(rng, vocab, n)
            if heavy:  # the first half of every chunk: clusters of CLUSTER near copies
                half = n // 2
                for c0 in range(0, half, CLUSTER):
                    base = answers[c0]
                    for j in range(c0 + 1, min(half, c0 + CLUSTER)):
                        answers[j] = _change(base, rng, 1, vocab)
            kinds = rng.random(n)
            for j in range(1, n):
                if kinds[j] < 0.05:  # exact copy, case and spacing changed
                    answers[j] = answers[j - 1].upper().replace(" ", "  ", 3)
                elif kinds[j] < 0.10:
                    answers[j] = _change(answers[j - 1], rng, 2, vocab)
            for j, a in enumerate(answers):
                q = (f"Question {start + j}: what does the following passage say about "
                     f"{vocab[(start + j) % len(vocab)]}?")
                text_bytes += len(q) + len(a)
                f.write(json.dumps({"id": f"t{start + j:08d}", "conversations": [
                    {"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n")
    (folder / "images").mkdir(exist_ok=True)
    for i in range(N_IMAGES):
        img = Image.new("RGB", (448, 448), tuple(int(x) for x in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 400, 2)
            draw.rectangle([int(x), int(y), int(x) + 40, int(y) + 40],
                           fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(folder / f"images/img{i:04d}.jpg", quality=85)
    n_img = rows // 20
    answers = _texts(rng, vocab, n_img, words=60)
    with open(folder / "image.jsonl", "w") as f:
        for j, a in enumerate(answers):
            q = f"<image>\nDescribe picture {j} in detail."
            text_bytes += len(q) + len(a)
            f.write(json.dumps({"id": f"i{j:08d}", "image": f"images/img{j % N_IMAGES:04d}.jpg",
                                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n")
    return {"rows": rows + n_img, "text_rows": rows, "image_rows": n_img, "text_bytes": text_bytes}


def write_recipe(folder: Path, tokenizer: Path) -> Path:
    recipe = f"""name: bench-load
seed: 1
sources:
  - name: text
    manifests: [{folder / 'text.jsonl'}]
    modality: text
  - name: image
    manifests: [{folder / 'image.jsonl'}]
    modality: auto
    n_max: 6
stages:
  filter:
    write_review: false
  tokenize:
    tokenizer: {tokenizer}
"""
    path = folder / "recipe.yaml"
    path.write_text(recipe)
    return path


def tokenizer_for(folder: Path) -> Path:
    from curate.demo import build_tokenizer, prose_topics

    return build_tokenizer(folder / "tokenizer", [body for _, body in prose_topics()], vocab_size=4000)


# ----------------------------------------------------------------------------- measuring
def mem_in_use() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


class Sampler(threading.Thread):
    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), mem_in_use()))
            time.sleep(self.every)

    def peak(self, t0: float, t1: float) -> int | None:
        """The most memory in use sampled in [t0, t1]; None when no sample fell in it."""
        vals = [m for t, m in self.samples if t0 <= t <= t1]
        return max(vals) if vals else None


def load_avg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def run_pipeline(recipe: Path, out: Path, sizes: dict[str, object]) -> dict[str, object]:
    env = dict(os.environ, CURATE_PROGRESS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]),
                                                                       os.environ.get("PYTHONPATH", "")]))
    sets = MODEL_STAGES_OFF + [f"ray.object_store_memory={OBJECT_STORE}"]
    cmd = [sys.executable, "-m", "curate.cli", "run", str(recipe), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    base = mem_in_use()
    sampler = Sampler()
    sampler.start()
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    t1 = time.time()
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"curate run failed:\n{proc.stderr[-4000:]}")
    stages = []
    for marker in sorted(out.glob("work/*/_DONE.json")):
        m = json.loads(marker.read_text())
        end = marker.stat().st_mtime
        stages.append({"stage": m["stage"], "rows": m["rows"], "seconds": m["seconds"],
                       "peak": sampler.peak(end - m["seconds"], end), "skipped": m.get("skipped"),
                       "linked": m.get("linked_files", 0)})
    return {"wall": t1 - t0, "peak": sampler.peak(t0, t1), "base": base, "stages": stages,
            "load": load_avg(), **sizes}


def print_table(name: str, r: dict[str, object], cores: int) -> None:
    gib = 1024**3
    per_row = r["text_bytes"] / r["rows"]
    print(f"\n{name}: {r['rows']} rows ({r['text_rows']} text + {r['image_rows']} image), "
          f"{r['text_bytes'] / 1e6:.0f} MB of conversation text, {cores} cores, load {r['load']}, "
          f"memory in use before the run {r['base'] / gib:.2f} GiB")
    print("| stage | rows | seconds | rows/s/core | MB/s/core | peak in use GiB | peak - before GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in r["stages"]:
        sec = max(s["seconds"], 1e-6)
        # a skipped stage links its input files (no rows read): a rate would mean nothing
        rates = ("skipped", "-") if s["skipped"] else \
            (f"{s['rows'] / sec / cores:.0f}", f"{s['rows'] * per_row / 1e6 / sec / cores:.2f}")
        peak = ("-", "-") if s["peak"] is None else (f"{s['peak'] / gib:.2f}", f"{(s['peak'] - r['base']) / gib:.2f}")
        name = f"{s['stage']} ({s['linked']} files linked)" if s["linked"] and not s["skipped"] else s["stage"]
        print(f"| {name} | {s['rows']} | {sec:.1f} | {rates[0]} | {rates[1]} | {peak[0]} | {peak[1]} |")
    print(f"| end to end | {r['rows']} | {r['wall']:.1f} | {r['rows'] / r['wall'] / cores:.0f} | "
          f"{r['text_bytes'] / 1e6 / r['wall'] / cores:.2f} | {r['peak'] / gib:.2f} | "
          f"{(r['peak'] - r['base']) / gib:.2f} |",
          flush=True)


# ----------------------------------------------------------------------------- DataTrove
def datatrove_run(text_jsonl: Path, work: Path, tasks: int = 2) -> dict[str, float]:
    """DataTrove's equivalent steps on the same text rows (answers only): seconds per phase."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    src = work / "in"
    src.mkdir(parents=True, exist_ok=True)
    with open(text_jsonl) as f, open(src / "a.jsonl", "w") as a, open(src / "b.jsonl", "w") as b:
        for i, line in enumerate(f):  # two input files: one per task
            r = json.loads(line)
            (a if i % 2 == 0 else b).write(json.dumps({"id": r["id"], "text": r["conversations"][1]["value"]}) + "\n")
    # regex words: NLTK's English tokenizer needs a data download this bench must not do, and
    # DataTrove's WhitespaceTokenizer needs spaCy
    words = _regex_word_tokenizer()
    times = {}
    t0 = time.perf_counter()
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(src)), GopherRepetitionFilter(language=words), GopherQualityFilter(language=words),
        JsonlWriter(str(work / "filtered"))], tasks=tasks, workers=tasks, logging_dir=str(work / "logs/f"),
    ).run()
    times["filter"] = time.perf_counter() - t0
    # sha1 shingle hashes: DataTrove's default xxhash path hands str to xxhash, which the
    # installed xxhash 4 refuses ("Strings must be encoded before hashing")
    cfg = MinhashConfig(num_buckets=14, hashes_per_bucket=8, hash_config=HashConfig(precision=64, hash_fc="sha1"))
    t0 = time.perf_counter()
    LocalPipelineExecutor(pipeline=[JsonlReader(str(src)), MinhashDedupSignature(str(work / "sigs"), config=cfg,
                                                                               language=words)],
                          tasks=tasks, workers=tasks, logging_dir=str(work / "logs/s")).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)],
                          tasks=cfg.num_buckets, workers=tasks, logging_dir=str(work / "logs/b")).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg)],
                          tasks=1, workers=1, logging_dir=str(work / "logs/c")).run()
    LocalPipelineExecutor(pipeline=[JsonlReader(str(src)), MinhashDedupFilter(str(work / "remove")),
                                    JsonlWriter(str(work / "deduped"))],
                          tasks=tasks, workers=tasks, logging_dir=str(work / "logs/d")).run()
    times["dedupe"] = time.perf_counter() - t0
    return times


def _regex_word_tokenizer():
    """A DataTrove WordTokenizer that needs no model: words and punctuation runs, as NLTK's
    English tokenizer splits them, and sentences ending at . ! ? or a newline."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        WORDS = re.compile(r"\w+|[^\w\s]+")
        SENTENCES = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")

        def word_tokenize(self, text: str) -> list[str]:
            return self.WORDS.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [s.strip() for s in self.SENTENCES.findall(text) if s.strip()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in self.SENTENCES.finditer(text) if m.group().strip()]

    return RegexWordTokenizer()


def _datatrove_child(text_jsonl: str, work: str, conn) -> None:
    import logging

    from loguru import logger

    logger.remove()
    logging.disable(logging.WARNING)
    # DataTrove adds a stderr sink per task and prints its stats tables: into a file, so the
    # bench's own tables stay readable
    Path(work).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(work) / "datatrove.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    conn.send(datatrove_run(Path(text_jsonl), Path(work)))


def datatrove_side_by_side(folder: Path, ours: dict[str, object], cores: int) -> None:
    try:
        import datatrove  # noqa: F401
    except ImportError:
        print("\n(datatrove not installed: pip install datatrove==0.10.1 for the side-by-side)")
        return
    import multiprocessing as mp

    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_datatrove_child,
                                           args=(str(folder / "text.jsonl"), str(folder / "datatrove"), child))
    proc.start()
    theirs = parent.recv()
    proc.join()
    n = ours["text_rows"]
    stage = {s["stage"]: s for s in ours["stages"]}
    print(f"\nside by side on the {n} text rows (DataTrove: local executor, {cores} tasks; load {load_avg()})")
    print("| step | DataTrove s | DataTrove rows/s/core | ours s | ours rows/s/core | ours / DataTrove |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, label in (("filter", "Gopher repetition + quality / filter"), ("dedupe", "MinHash 4 steps / dedupe")):
        ours_rows = stage[name]["rows"]  # our stage also sees the image rows
        ours_rate = ours_rows / stage[name]["seconds"] / cores
        their_rate = n / theirs[name] / cores
        print(f"| {label} | {theirs[name]:.1f} | {their_rate:.0f} | {stage[name]['seconds']:.1f} | "
              f"{ours_rate:.0f} | {ours_rate / their_rate:.2f}x |", flush=True)


# ----------------------------------------------------------------------------- main
def main() -> None:
    cores = os.cpu_count() or 1
    keep = os.environ.get("BENCH_LOAD_KEEP")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-load-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        tok = tokenizer_for(root)
        print(f"bench-load: {ROWS} text rows per corpus, object store cap {OBJECT_STORE / 1024**3:.1f} GiB, "
              f"load {load_avg()}", flush=True)
        results = {}
        for corpus in CORPORA:
            folder = root / corpus
            t0 = time.perf_counter()
            sizes = generate(folder, ROWS, heavy=corpus == "heavy")
            print(f"{corpus}: generated in {time.perf_counter() - t0:.0f}s", flush=True)
            out = root / f"run-{corpus}"
            shutil.rmtree(out, ignore_errors=True)
            results[corpus] = run_pipeline(write_recipe(folder, tok), out, sizes)
            print_table(corpus, results[corpus], cores)
            shutil.rmtree(out / "work", ignore_errors=True)
        if "low" in results and "heavy" in results:
            print(f"\nduplicate-heavy / low-overlap wall time: {results['heavy']['wall'] / results['low']['wall']:.2f}")
        if "low" in results and os.environ.get("BENCH_LOAD_DATATROVE", "1") == "1":
            datatrove_side_by_side(root / "low", results["low"], cores)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
