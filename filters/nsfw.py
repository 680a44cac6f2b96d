"""Unsafe-image detection with NudeNet's 320n detector (nudenet==3.4.2, MIT; a YOLOv8-n ONNX model).

The model finds 18 kinds of body part in an image; an image is unsafe when it shows one of
UNSAFE_LABELS (exposed genitals, female breasts, anus or buttocks) with a score at or above the
threshold. Faces, feet, belly, armpits, male breasts and every *_COVERED class are reported
but never count.

The package's own NudeDetector needs OpenCV only to read, pad and resize the image and for
non-maximum suppression; this module does the same with Pillow and numpy and runs the ONNX file
with onnxruntime, so the project needs no OpenCV. The preprocessing, as nudenet 3.4.2 does it:
1. decode to 8-bit RGB (alpha dropped, grey expanded);
2. pad right and bottom with black to a square of the longer side;
3. resize the square to 320 x 320, bilinear with pixel centres aligned (OpenCV's INTER_LINEAR,
   which does not low-pass before shrinking);
4. scale to [0, 1], channels first, in B, G, R order: nudenet converts its BGR decode with
   COLOR_RGBA2BGR (a swap) and then swaps again in blobFromImage, so its model sees BGR;
5. decode the (1, 22, 2100) output: per anchor, a box and 18 class scores; anchors whose best
   class scores under 0.2 are dropped, then class-agnostic NMS (score 0.25, IoU 0.45), as nudenet.
Scores agree with NudeDetector's to about 0.01 (OpenCV's fixed-point resize rounds differently).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 320
LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
#: the classes that make an image unsafe: exposed genitals, female breasts, anus and buttocks
UNSAFE_LABELS = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                           "ANUS_EXPOSED", "BUTTOCKS_EXPOSED"})
CANDIDATE_SCORE = 0.2  # nudenet's cut before NMS
NMS_SCORE, NMS_IOU = 0.25, 0.45


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x, y, w, h in the original image's pixels


def model_path() -> Path:
    """320n.onnx inside the installed nudenet package (`make setup` installs it)."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nudenet is not installed: run `make setup` "
                                "(pip install --no-deps nudenet==3.4.2)")
    path = Path(spec.submodule_search_locations[0]) / "320n.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall nudenet==3.4.2")
    return path


def unsafe_score(detections: list[Detection]) -> float:
    """The highest score of an unsafe class in one image (0.0 when none was found)."""
    return max((d.score for d in detections if d.label in UNSAFE_LABELS), default=0.0)


def _axis(n_out: int, n_in: int, n_real: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and weight of the high one for an OpenCV-style bilinear resize of
    a padded axis of n_in pixels, of which the first n_real are the image and the rest black.
    Indices past the image point at index n_real, a black row or column appended by the caller."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).astype(np.float32)
    return np.minimum(lo, n_real), np.minimum(hi, n_real), w


def preprocess(image: Any) -> np.ndarray:
    """A Pillow image (any mode) -> the model's (3, 320, 320) float32 input, as nudenet makes it."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    side = max(h, w)
    padded = np.zeros((h + 1, w + 1, 3), np.uint8)  # one black row and column stand for the padding
    padded[:h, :w] = rgb
    y0, y1, wy = _axis(SIZE, side, h)
    x0, x1, wx = _axis(SIZE, side, w)
    wx = wx[None, :, None]

    def cols(rows: np.ndarray) -> np.ndarray:  # gather the 320 rows first: float only at 320 x 320
        return rows[:, x0].astype(np.float32) * (1 - wx) + rows[:, x1].astype(np.float32) * wx

    top, bottom = cols(padded[y0]), cols(padded[y1])
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    out = np.round(out) / 255.0  # OpenCV resizes 8-bit images to 8-bit values
    return np.ascontiguousarray(out[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)  # BGR, channels first


def _nms(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    """Greedy class-agnostic non-maximum suppression (OpenCV's NMSBoxes, eta 1)."""
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > NMS_SCORE]
    keep: list[int] = []
    for i in order:
        x, y, w, h = boxes[i]
        ok = True
        for j in keep:
            xj, yj, wj, hj = boxes[j]
            iw = min(x + w, xj + wj) - max(x, xj)
            ih = min(y + h, yj + hj) - max(y, yj)
            inter = max(iw, 0) * max(ih, 0)
            union = w * h + wj * hj - inter
            if union > 0 and inter / union > NMS_IOU:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def postprocess(output: np.ndarray, width: int, height: int) -> list[Detection]:
    """One image's (22, anchors) output -> its detections, best first."""
    rows = output.T
    class_scores = rows[:, 4:]
    best = class_scores.max(axis=1)
    sel = np.nonzero(best >= CANDIDATE_SCORE)[0]
    if not len(sel):
        return []
    scale = max(width, height) / SIZE
    cx, cy, bw, bh = (rows[sel, k] for k in range(4))
    x = np.clip((cx - bw / 2) * scale, 0, width)
    y = np.clip((cy - bh / 2) * scale, 0, height)
    bw = np.minimum(bw * scale, width - x)
    bh = np.minimum(bh * scale, height - y)
    boxes = np.stack([x, y, bw, bh], axis=1)
    scores = best[sel]
    classes = class_scores[sel].argmax(axis=1)
    return [Detection(LABELS[classes[i]], float(scores[i]), tuple(float(v) for v in boxes[i]))
            for i in _nms(boxes, scores)]


class NsfwDetector:
    """NudeNet's 320n model on onnxruntime; `detect` takes Pillow images, several per call."""

    def __init__(self, path: str | Path | None = None, threads: int = 1):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path or model_path()), opts,
                                                    providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def detect(self, images: list[Any], batch_size: int = 8) -> list[list[Detection]]:
        out: list[list[Detection]] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = np.stack([preprocess(im) for im in chunk])
            (pred,) = self.session.run(None, {self.input_name: batch})[:1]
            out.extend(postprocess(pred[k], im.width, im.height) for k, im in enumerate(chunk))
        return out

    def detect_files(self, paths: list[str], batch_size: int = 8) -> list[list[Detection]]:
        from PIL import Image

        images = []
        for p in paths:
            with Image.open(p) as im:
                im.load()
                images.append(im)
        return self.detect(images, batch_size)


@functools.lru_cache(maxsize=2)
def shared_detector(path: str | None = None, threads: int = 1) -> NsfwDetector:
    """One detector per process (and model path): filter tasks reuse their worker's."""
    return NsfwDetector(path, threads)
