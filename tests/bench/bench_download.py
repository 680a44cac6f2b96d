"""Download benchmark: images/s and images per CPU-second fetched from a loopback server.

300 JPEGs of ~1.4 Mpx (1366x1024) served by a separate process on 127.0.0.1. Compared in
the same run: the download stage's fetch + store path (16 threads, one pool), with and
without resize to 512 px, against a plain threaded urllib loop that writes each body to a
file. CPU-seconds are this process's (the server's are not counted).
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

N = 300


def photo_like(i: int) -> bytes:
    """A 1366x1024 JPEG with photo-like entropy (~250 KB), not a flat colour."""
    import io

    from PIL import Image, ImageFilter

    noise = Image.effect_noise((1366, 1024), 60).filter(ImageFilter.GaussianBlur(1.5))
    img = Image.merge("RGB", (noise, noise.rotate(90, expand=False), noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85 + i % 5)
    return out.getvalue()


def _serve(conn) -> None:
    from tests.http_faults import FaultServer

    base = [photo_like(i) for i in range(5)]
    images = {f"{i}.jpg": base[i % 5] + i.to_bytes(4, "little") for i in range(N)}  # distinct bytes
    with FaultServer(images) as server:
        conn.send(server.port)
        conn.recv()  # until the benchmark is done


def plain_urllib(urls: list[str], out: Path) -> int:
    def one(i_url):
        i, url = i_url
        with urllib.request.urlopen(url, timeout=10) as r:
            (out / f"{i}.jpg").write_bytes(r.read())
        return 1

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(one, enumerate(urls)))


def stage_path(urls: list[str], out: Path, resize: int | None) -> int:
    from curate.recipe import DownloadConfig
    from curate.stages.base import RunContext
    from curate.stages.download import DownloadStage

    cfg = DownloadConfig(concurrency=16, per_host=16, resize_max_side=resize, jpeg_quality=90,
                         allow_private=True)  # the server is on loopback
    stage = DownloadStage(cfg, RunContext(out_dir=str(out)))
    stage.setup()
    rows = [{"id": str(i), "reject_reason": None, "media": [{"kind": "image", "ref": u, "path": None}]}
            for i, u in enumerate(urls)]
    done = stage.process_rows(rows)
    return sum(1 for r in done if r["media"][0]["path"])


def timed(fn, *args):
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn(*args)
    return n, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import urllib3  # noqa: F401

    import curate.stages.download  # noqa: F401  (imports are not part of the measurement)

    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    port = parent.recv()
    urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(N)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plain_urllib(urls[:10], Path(tmp))  # warm-up: first connections, lazy imports
            stage_path(urls[:10], Path(tmp) / "warm", 512)
            rows = []
            n, wall, cpu = timed(plain_urllib, urls, Path(tmp))
            base = n / cpu
            rows.append(("plain threaded urllib -> files", n, wall, cpu))
            for name, resize in (("download stage, no resize", None), ("download stage, resize 512", 512)):
                d = Path(tmp) / name.replace(" ", "_").replace(",", "")
                rows.append((name, *timed(stage_path, urls, d, resize)))
        jpeg_kb = len(__import__("urllib.request").request.urlopen(urls[0]).read()) // 1000
        print(f"{N} photo-like JPEGs of 1366x1024 (~{jpeg_kb} KB) "
              "from a loopback server (separate process)")
        print(f"{'method':<34} {'images':>7} {'img/s':>8} {'img/CPU-s':>10} {'x plain':>8}")
        for name, n, wall, cpu in rows:
            print(f"{name:<34} {n:>7} {n / wall:>8.1f} {n / cpu:>10.1f} {(n / cpu) / base:>8.2f}")
    finally:
        parent.send("stop")
        proc.join(5)


if __name__ == "__main__":
    main()
