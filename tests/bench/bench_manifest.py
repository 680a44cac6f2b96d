"""`python -m tests.bench bench_manifest`: a JSON array manifest against JSONL, through the ingest stage.

The same generated rows (LLaVA-shaped: an id, an image path, four turns of varied text, about
500 bytes each) are written twice into a temporary folder (never committed): as JSONL, and as
one indented JSON array of BENCH_MANIFEST_MB megabytes (default 1024). Each file goes through
the runner's ingest stage alone (the manifest pass that finds the pieces, the parallel read
fused with parsing on Ray, the Parquet write), twice, alternating, so a shared machine's load
falls on both alike. Printed per format: rows, seconds (the better of the two), MB/s, the CPU
seconds of the process tree (less sensitive to other load than wall time), and the
peak resident memory of this process and its Ray processes (sampled every 0.1 s): the largest
single process, which stays near a JSONL read's when the array is streamed (a reader that
held the array would need its whole size), and the sum over the process tree. The verdict
line compares array speed with JSONL speed (the goal: at least 0.8).

Settings: BENCH_MANIFEST_MB (array size in MB), BENCH_MANIFEST_CPUS (Ray CPUs, default all),
BENCH_MANIFEST_KEEP (a folder to keep the files in).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

MB = int(os.environ.get("BENCH_MANIFEST_MB", "1024"))
CPUS = int(os.environ["BENCH_MANIFEST_CPUS"]) if os.environ.get("BENCH_MANIFEST_CPUS") else None
WORDS = ("the a of to in is on with for as at by from picture shows man woman dog cat street car bus "
         "red blue green small large old young two three near behind holding wearing sitting standing "
         "table window tree sky building road water light dark white black yellow person people group "
         "field").split()


def write_manifests(folder: Path, megabytes: int, seed: int = 0) -> tuple[Path, Path, int]:
    """The same rows as JSONL and as an indented JSON array of about `megabytes` MB."""
    rnd = random.Random(seed)
    jsonl, array = folder / "rows.jsonl", folder / "rows.json"
    n, size = 0, 0
    with open(jsonl, "w") as fl, open(array, "w") as fa:
        fa.write("[\n")
        while size < megabytes * 1_000_000:
            def say(k: int) -> str:
                return " ".join(rnd.choices(WORDS, k=k))

            row = {"id": f"s{n}", "image": f"coco/train2017/{n:012d}.jpg", "conversations": [
                {"from": "human", "value": f"<image>\nWhat is {say(6)}?"},
                {"from": "gpt", "value": say(rnd.randint(20, 60))},
                {"from": "human", "value": f"And {say(5)}?"},
                {"from": "gpt", "value": say(rnd.randint(5, 25))}]}
            line = json.dumps(row)
            fl.write(line + "\n")
            fa.write(("" if n == 0 else ",\n") + json.dumps(row, indent=2))
            n += 1
            size += len(line) + 1
        fa.write("\n]\n")
    return jsonl, array, n


class TreeMemory:
    """Peak RSS of this process and all its descendants (Ray's workers), sampled in a thread, and
    the CPU seconds they spent meanwhile (a shared machine stretches wall time, much less CPU time)."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak_one = self.peak_sum = 0
        self.cpu_seconds = 0.0
        self._cpu0 = self._cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            rss = []
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            self.peak_one = max(self.peak_one, max(rss))
            self.peak_sum = max(self.peak_sum, sum(rss))
            time.sleep(0.1)

    def _cpu(self) -> dict[int, float]:
        import psutil

        out = {}
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def __enter__(self) -> "TreeMemory":
        self._cpu0 = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_seconds = sum(t - self._cpu0.get(pid, 0.0) for pid, t in self._cpu().items())


def ingest_once(runner_cls, recipe, out: Path) -> tuple[float, int, TreeMemory]:
    """Run the recipe's ingest stage alone; (seconds, rows kept, memory)."""
    from curate.layout import read_marker
    from curate.manifest import RAW_SCHEMA
    from curate.runner import RayExecutor
    from curate.stages.base import Job

    shutil.rmtree(out, ignore_errors=True)
    runner = runner_cls(recipe, out)
    manifests, stages = runner.prepare()
    runner.init_ray()
    ingest = stages[0]
    job = Job(None, runner.layout.stage_dir(0, ingest.name), ingest.resolved_resources(), RayExecutor())
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        runner.run_stage(ingest, job, ingest.output_schema(RAW_SCHEMA), "bench", manifests, None)
        seconds = time.perf_counter() - t0
    marker = read_marker(job.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    return seconds, int(marker["kept"]), mem


def main() -> None:
    import ray

    from curate.recipe import Recipe
    from curate.runner import Runner

    keep = os.environ.get("BENCH_MANIFEST_KEEP")
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        jsonl, array, n = write_manifests(folder, MB)
        print(f"rows: {n}; JSONL {jsonl.stat().st_size / 1e6:.0f} MB, JSON array "
              f"{array.stat().st_size / 1e6:.0f} MB (indented), written in {time.perf_counter() - t0:.0f}s",
              flush=True)
        recipes = {fmt: Recipe.model_validate({
            "name": "bench", "sources": [{"name": "rows", "manifests": [str(path)]}],
            "ray": {"num_cpus": CPUS, "object_store_memory": 1 << 30}}) for fmt, path in (("jsonl", jsonl),
                                                                                          ("array", array))}
        best: dict[str, tuple[float, float, int, int]] = {}
        cpu: dict[str, float] = {}
        for attempt in range(2):
            for fmt in ("jsonl", "array"):
                seconds, kept, mem = ingest_once(Runner, recipes[fmt], folder / f"run-{fmt}")
                assert kept == n, (fmt, kept, n)
                size = (jsonl if fmt == "jsonl" else array).stat().st_size
                print(f"{fmt:>5} try {attempt + 1}: {seconds:7.1f}s  {n / seconds:9.0f} rows/s  "
                      f"{size / 1e6 / seconds:6.1f} MB/s  peak RSS: largest process "
                      f"{mem.peak_one / 2**20:6.0f} MiB, process tree {mem.peak_sum / 2**20:6.0f} MiB; "
                      f"CPU {mem.cpu_seconds:6.1f}s", flush=True)
                if fmt not in best or seconds < best[fmt][0]:
                    best[fmt] = (seconds, mem.cpu_seconds, mem.peak_one, mem.peak_sum)
                cpu[fmt] = min(cpu.get(fmt, float("inf")), mem.cpu_seconds)
        ratio, cpu_ratio = best["jsonl"][0] / best["array"][0], cpu["jsonl"] / cpu["array"]
        print(f"JSON array ingest speed / JSONL ingest speed (same rows, best of 2): {ratio:.2f} in wall time, "
              f"{cpu_ratio:.2f} in CPU time ({'meets' if min(ratio, cpu_ratio) >= 0.8 else 'misses'} the 0.8 "
              f"goal); largest process {best['array'][2] / 2**20:.0f} MiB for a "
              f"{array.stat().st_size / 2**20:.0f} MiB array (JSONL: {best['jsonl'][2] / 2**20:.0f} MiB)")
    finally:
        ray.shutdown()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
