"""Media resolution and validation, one bad-input kind per case; nothing outside the roots is read."""

import io
import os
import subprocess

import pytest
from PIL import Image

from curate.recipe import MediaConfig, SourceConfig
from curate.records import empty_media
from curate.stages.base import RunContext
from curate.stages.media import MediaStage


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    Image.new("RGB", (1600, 400), "red").save(root / "wide.jpg")
    Image.new("RGB", (300, 200), "blue").save(root / "small.png")
    good = (root / "wide.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.jpg").write_bytes(b"not an image at all" * 10)
    (root / "empty.jpg").write_bytes(b"")
    Image.new("1", (20000, 20000)).save(root / "bomb.png")
    (root / "broken.mp4").write_bytes(os.urandom(2048))
    (root / "broken.wav").write_bytes(b"RIFF....WAVEjunk" * 4)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "2",
                    "-pix_fmt", "yuv420p", str(root / "clip.mp4")], check=True)
    subprocess.run(["espeak-ng", "-w", str(root / "speech.wav"), "hello world"], check=True)
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (64, 64)).save(outside)
    os.symlink(outside, root / "link.jpg")
    return root


def run(corpus, kind, ref, **cfg):
    ctx = RunContext(out_dir=str(corpus.parent / "out"),
                     sources={"s": SourceConfig(name="s", manifests=["m"], n_max=12)})
    st = MediaStage(MediaConfig(video_frames=4, **cfg), ctx)
    st.setup()
    row = {"id": "x", "source": "s", "manifest": str(corpus / "m.jsonl"), "media": [empty_media(kind, ref)],
           "reject_reason": None}
    return st.process_rows([row])[0]


def test_good_image_is_stored_and_tiled(corpus):
    row = run(corpus, "image", "wide.jpg")
    m = row["media"][0]
    assert row["reject_reason"] is None
    assert (m["width"], m["height"], m["grid_w"], m["grid_h"], m["tiles"]) == (1600, 400, 4, 1, 5)
    assert os.path.exists(m["path"]) and m["path"].endswith(".jpg") and len(m["sha256"]) == 64
    png = run(corpus, "image", "small.png")["media"][0]
    assert (png["tiles"], png["mime"]) == (7, "image/png")  # 3:2 exact -> 3x2 + thumbnail


def test_video_frames_and_audio_duration(corpus):
    v = run(corpus, "video", "clip.mp4")["media"][0]
    assert v["tiles"] == 4 and len(v["frames"]) == 4 and 1.9 < v["duration"] < 2.2
    assert Image.open(v["frames"][0]).size == (448, 448)
    a = run(corpus, "audio", "speech.wav")["media"][0]
    assert a["path"].endswith(".flac") and 0.3 < a["duration"] < 3
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate,channels", "-of", "csv=p=0",
                            a["path"]], capture_output=True, text=True).stdout.strip()
    assert probe == "16000,1"


@pytest.mark.parametrize("kind,ref,reason", [
    ("image", "nope.jpg", "missing_file"),
    ("image", "truncated.jpg", "broken_image"),
    ("image", "text.jpg", "broken_image"),
    ("image", "empty.jpg", "empty_file"),
    ("image", "bomb.png", "image_too_large"),
    ("video", "broken.mp4", "broken_video"),
    ("audio", "broken.wav", "broken_audio"),
    ("image", "../secret.jpg", "path_outside_roots"),
    ("image", "link.jpg", "path_outside_roots"),
    ("image", "/etc/hostname", "path_outside_roots"),
    ("image", "file:///etc/hostname", "path_outside_roots"),
    ("image", "ftp://127.0.0.1/a.jpg", "bad_scheme"),
    ("image", "javascript:alert(1)", "bad_scheme"),
    ("image", "file://otherhost/a.jpg", "bad_scheme"),
    ("image", "http://127.0.0.1:9/a.jpg", "url_not_fetched"),
])
def test_bad_media_become_rejects(corpus, kind, ref, reason):
    row = run(corpus, kind, ref)
    assert row["reject_reason"] == reason, row["reject_detail"]
    assert row["reject_stage"] == "media" and ref.split("/")[-1] in row["reject_detail"]


def test_allowed_roots_and_file_urls_inside_them(corpus):
    assert run(corpus, "image", f"file://{corpus}/wide.jpg")["reject_reason"] is None
    outside = corpus.parent / "secret.jpg"
    assert run(corpus, "image", str(outside))["reject_reason"] == "path_outside_roots"
    assert run(corpus, "image", str(outside), allowed_roots=[str(corpus.parent)])["reject_reason"] is None


def test_caps_from_the_recipe(corpus):
    assert run(corpus, "image", "wide.jpg", max_pixels=1000)["reject_reason"] == "image_too_large"
    assert run(corpus, "image", "wide.jpg", max_bytes=10)["reject_reason"] == "file_too_large"
    assert run(corpus, "audio", "speech.wav", max_audio_seconds=0.1)["reject_reason"] == "audio_too_long"


def test_multi_image_shares_n_max(corpus):
    ctx = RunContext(out_dir=str(corpus / "o"),
                     sources={"s": SourceConfig(name="s", manifests=["m"], n_max=6)})
    st = MediaStage(MediaConfig(), ctx)
    st.setup()
    row = {"id": "x", "source": "s", "manifest": str(corpus / "m.jsonl"), "reject_reason": None,
           "media": [empty_media("image", "wide.jpg"), empty_media("image", "wide.jpg")]}
    out = st.process_rows([row])[0]
    assert [m["grid_w"] * m["grid_h"] for m in out["media"]] == [3, 3]  # floor(6 / 2) tiles each, 4:1 -> 3x1


def test_decoded_bytes_of_non_jpeg_png_are_converted(corpus):
    buf = io.BytesIO()
    Image.new("RGB", (100, 100), "green").save(buf, format="BMP")
    (corpus / "pic.bmp").write_bytes(buf.getvalue())
    m = run(corpus, "image", "pic.bmp")["media"][0]
    assert m["path"].endswith(".png") and Image.open(m["path"]).format == "PNG"


def test_an_image_asked_again_is_checked_once_unless_the_file_changed(corpus, monkeypatch):
    """Rows that share an image file (several questions about one picture) decode it once per
    worker; the tile grid is still each row's own, and a rewritten file is checked again."""
    from curate import mediaio

    ctx = RunContext(out_dir=str(corpus.parent / "out"),
                     sources={"s": SourceConfig(name="s", manifests=["m"], n_max=12),
                              "few": SourceConfig(name="few", manifests=["m"], n_max=2)})
    st = MediaStage(MediaConfig(), ctx)
    probes = []
    real = mediaio.probe_image
    monkeypatch.setattr(mediaio, "probe_image", lambda *a: probes.append(1) or real(*a))

    def row(source):
        return {"id": "x", "source": source, "manifest": str(corpus / "m.jsonl"), "reject_reason": None,
                "media": [empty_media("image", "wide.jpg")]}

    a, b, c = st.process_rows([row("s"), row("few"), row("s")])
    assert len(probes) == 1 and a["media"][0] == c["media"][0]
    assert (a["media"][0]["tiles"], b["media"][0]["tiles"]) == (5, 3)  # 4x1 + thumbnail; 2x1 + thumbnail
    assert b["media"][0]["sha256"] == a["media"][0]["sha256"]
    Image.new("RGB", (400, 400), "green").save(corpus / "wide.jpg")  # same name, new bytes
    os.utime(corpus / "wide.jpg", ns=(1, 1))
    d = st.process_rows([row("s")])[0]["media"][0]
    assert len(probes) == 2 and (d["width"], d["height"]) == (400, 400) and d["sha256"] != a["media"][0]["sha256"]
    truncated = st.process_rows([row("s") | {"media": [empty_media("image", "truncated.jpg")]} for _ in range(2)])
    assert [r["reject_reason"] for r in truncated] == ["broken_image"] * 2 and len(probes) == 4  # not kept
