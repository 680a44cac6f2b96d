"""The NSFW image check: NudeNet's 320n model (filters.nsfw) and its place in the filter stage."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate.records import empty_media
from filters import nsfw
from filters.nsfw import Detection, NsfwDetector, postprocess, preprocess, unsafe_score
from tests.filters.test_filter_stage import PROSE, make_stage, review_lines, row, run_rows

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nudenet") is None,
                                reason="nudenet==3.4.2 is installed by `make setup`")


def real_photos() -> list[Path]:
    """Real photographs installed with the dependencies: matplotlib's portrait of Grace Hopper, and
    scikit-image's sample photos where scikit-image is installed."""
    import matplotlib

    photos = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        data = Path(spec.submodule_search_locations[0]) / "data"
        names = ("astronaut.png", "camera.png", "coffee.png", "chelsea.png", "rocket.jpg",
                 "motorcycle_left.png", "retina.jpg", "horse.png", "moon.png", "coins.png")
        photos += [data / n for n in names if (data / n).is_file()]
    return [p for p in photos if p.is_file()]


@pytest.fixture(scope="module")
def detector() -> NsfwDetector:
    return NsfwDetector()


def test_the_model_loads_offline_and_real_photos_score_below_the_threshold(detector, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    photos = real_photos()
    assert photos, "matplotlib's sample photo is missing"
    found = detector.detect_files([str(p) for p in photos])
    for path, dets in zip(photos, found):
        assert unsafe_score(dets) < 0.3, (path.name, dets)
    # the model does see people: a face in the portrait, with a box inside the picture
    hopper = found[0]
    face = [d for d in hopper if d.label == "FACE_FEMALE"]
    assert face and face[0].score > 0.5
    with Image.open(photos[0]) as im:
        x, y, w, h = face[0].box
        assert 0 <= x < x + w <= im.width and 0 <= y < y + h <= im.height


def test_preprocessing_pads_resizes_and_orders_channels_as_nudenet():
    wide = Image.new("RGB", (640, 320), (255, 0, 0))  # red, twice as wide as tall
    x = preprocess(wide)
    assert x.shape == (3, 320, 320) and x.dtype == np.float32
    # nudenet's model sees B, G, R: red is the last channel; the lower half is black padding
    assert np.allclose(x[2, :150], 1.0) and np.allclose(x[0, :150], 0.0) and np.allclose(x[1], 0.0)
    assert np.allclose(x[:, 170:], 0.0)
    grey = preprocess(Image.new("L", (100, 100), 128))
    assert np.allclose(grey, 128 / 255, atol=1e-6)


def test_decoding_drops_weak_anchors_and_suppresses_overlaps():
    out = np.zeros((22, 4), np.float32)
    # two overlapping boxes (the weaker is suppressed, whatever its class), one apart, one too weak
    for k, (cx, cy, w, h, cls, score) in enumerate([(100, 100, 50, 50, 3, 0.9), (102, 100, 50, 50, 1, 0.6),
                                                    (250, 250, 40, 40, 12, 0.7), (50, 250, 30, 30, 2, 0.1)]):
        out[:4, k] = cx, cy, w, h
        out[4 + cls, k] = score
    dets = postprocess(out, 640, 320)  # scale 2 back to the original pixels
    assert [d.label for d in dets] == ["FEMALE_BREAST_EXPOSED", "FACE_MALE"]
    assert dets[0].box == pytest.approx((150, 150, 100, 100))
    assert dets[1].box == pytest.approx((460, 320, 80, 0))  # clipped to the image, as nudenet does
    assert unsafe_score(dets) == pytest.approx(0.9) and unsafe_score(dets[1:]) == 0.0


class FakeDetector:
    """Detections by file name: `unsafe*` shows an exposed breast, `border*` a weak one."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def detect_files(self, paths):
        self.calls.append(list(paths))
        out = []
        for p in paths:
            name = Path(p).name
            if name.startswith("unsafe"):
                out.append([Detection("FEMALE_BREAST_EXPOSED", 0.81, (0, 0, 9, 9)),
                            Detection("FACE_FEMALE", 0.7, (0, 0, 3, 3))])
            elif name.startswith("border"):
                out.append([Detection("BUTTOCKS_EXPOSED", 0.4, (0, 0, 9, 9))])
            else:
                out.append([Detection("FEMALE_BREAST_COVERED", 0.9, (0, 0, 9, 9))])
        return out


def image_item(path: str) -> dict:
    return empty_media("image", path) | {"path": path}


def video_item(frames: list[str]) -> dict:
    return empty_media("video", "v.mp4") | {"path": "v.mp4", "frames": frames}


def test_the_filter_rejects_unsafe_images_and_reviews_borderline_frames(tmp_path, monkeypatch):
    fake = FakeDetector()
    monkeypatch.setattr(nsfw, "shared_detector", lambda *a, **k: fake)
    stage = make_stage(tmp_path, nsfw=True)
    two = [image_item("/s/ok.jpg"), image_item("/s/unsafe.jpg")]
    rows = [row("unsafe", "<image>\n<image>\nDescribe.", PROSE, media=two, modality="image"),
            row("video", "<video>\nDescribe.", PROSE, media=[video_item(["/s/f1.jpg", "/s/border2.jpg"])],
                modality="video"),
            row("covered", "<image>\nDescribe.", PROSE, media=[image_item("/s/ok.jpg")], modality="image"),
            row("text", "Explain.", PROSE)]
    out = run_rows(stage, rows)
    bad = out["unsafe"]
    assert bad["reject_reason"] == "unsafe_image" and bad["reject_stage"] == "filter"
    assert bad["reject_detail"] == "media 2: FEMALE_BREAST_EXPOSED=0.81 nsfw_threshold=0.5"
    assert bad["nsfw_score"] == pytest.approx(0.81) and bad["filter_flags"] == "unsafe_image"
    assert bad["nsfw_labels"] == ("media 1: FEMALE_BREAST_COVERED=0.90 | "
                                  "media 2: FEMALE_BREAST_EXPOSED=0.81 FACE_FEMALE=0.70")
    video = out["video"]  # a sampled frame decides for its video
    assert video["reject_reason"] is None and video["filter_flags"] == "nsfw_borderline"
    assert video["nsfw_score"] == pytest.approx(0.4)
    assert "media 1 frame 2: BUTTOCKS_EXPOSED=0.40" in video["nsfw_labels"]
    covered = out["covered"]  # covered classes never count
    assert covered["reject_reason"] is None and covered["nsfw_score"] == 0.0 and covered["filter_flags"] == ""
    assert out["text"]["nsfw_score"] is None and out["text"]["nsfw_labels"] is None
    assert len(fake.calls) == 1 and sorted(fake.calls[0]) == ["/s/border2.jpg", "/s/f1.jpg", "/s/ok.jpg",
                                                              "/s/unsafe.jpg"]  # one pass, each file once
    review = {e["id"]: e for e in review_lines(tmp_path)}
    assert set(review) == {"unsafe", "video"}
    assert review["video"]["decision"] == "kept" and review["video"]["nsfw_score"] == pytest.approx(0.4)
    assert review["unsafe"]["decision"] == "rejected"
    assert "FEMALE_BREAST_EXPOSED" in review["unsafe"]["nsfw_labels"]
    # a stricter threshold rejects the frame; off (the default), no column and no detector
    strict = run_rows(make_stage(tmp_path, nsfw=True, nsfw_threshold=0.35), rows[1:2])
    assert strict["video"]["reject_reason"] == "unsafe_image"
    off = run_rows(make_stage(tmp_path), rows[:1])
    assert "nsfw_score" not in off["unsafe"] and off["unsafe"]["reject_reason"] is None


def test_the_filter_runs_the_real_model_on_a_real_photo(tmp_path):
    photo = str(real_photos()[0])
    sample = row("p", "<image>\nWho is this?", PROSE, media=[image_item(photo)], modality="image")
    out = run_rows(make_stage(tmp_path, nsfw=True), [sample])["p"]
    assert out["reject_reason"] is None and out["nsfw_score"] == 0.0
    assert out["nsfw_labels"].startswith("media 1: FACE_FEMALE=")
