"""A tiny packed run for the training tests, built once per session without Ray.

Real parts: the demo tokenizer, the tokenize stage's ChatEncoder, the shard writer
(packing.shards), Pillow images and ffmpeg FLAC audio, and the tiny random models that
`curate demo-data` writes. Samples are packed 3 per sequence (text, image, audio mixed).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-stage3.yaml"
ANSWERS = ["The bars show that B is the largest value in the chart.",
           "A list comprehension builds a list from an iterable in one expression.",
           "The speaker reads a sentence from the Python documentation."]


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Tokenizer (trained on a few sentences, with the media tokens) and the tiny model folders."""
    from curate.demo import build_tiny_models, build_tokenizer, prose_topics

    out = tmp_path_factory.mktemp("train-assets")
    texts = [body for _, body in prose_topics(60)] + ANSWERS
    build_tokenizer(out / "tokenizer", texts, vocab_size=600)
    build_tiny_models(out / "models", out / "tokenizer")
    return out


def make_image(folder: Path, k: int) -> dict:
    from PIL import Image

    path = folder / f"img{k}.png"
    Image.new("RGB", (448, 448), (40 * k % 255, 90, 200)).save(path)
    return {"kind": "image", "sha256": f"img{k}", "path": str(path), "grid_w": 1, "grid_h": 1, "tiles": 1,
            "width": 448, "height": 448}


def make_audio(folder: Path, k: int, seconds: float) -> dict:
    path = folder / f"clip{k}.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"sine=frequency={300 + 50 * k}:duration={seconds}",
                    "-ar", "16000", "-ac", "1", str(path)], check=True)
    return {"kind": "audio", "sha256": f"clip{k}", "path": str(path), "duration": seconds}


def tiny_samples(folder: Path, tokenizer: Path, n: int) -> list[dict]:
    from curate.stages.tokenize import ChatEncoder, load_tokenizer

    enc = ChatEncoder(load_tokenizer(str(tokenizer)), 256, 50.0, 3)
    out = []
    for k in range(n):
        kind = ["text", "image", "audio"][k % 3]
        media, q = [], "Explain list comprehensions."
        if kind == "image":
            media, q = [make_image(folder, k)], "<image>\nWhich bar is largest?"
        elif kind == "audio":
            media, q = [make_audio(folder, k, 1.0 + 0.5 * (k % 2))], "<audio>\nWhat does the speaker read?"
        row = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": ANSWERS[k % 3]}],
               "media": media}
        ids, labels, tiles = enc.encode(row)[:3]
        out.append({"id": f"s{k}", "source": f"demo-{kind}", "modality": kind, "input_ids": ids, "labels": labels,
                    "n_tiles": tiles, "media": media, "n_response_tokens": sum(x != -100 for x in labels)})
    return out


def write_run(folder: Path, samples: list[dict], per_sequence: int = 3, per_shard: int = 4) -> Path:
    from packing.shards import pack_sequence, write_shard

    shards = folder / "shards"
    shards.mkdir(parents=True)
    seqs = [pack_sequence(f"{i // per_shard:06d}-{i:08d}", i, samples[j:j + per_sequence])
            for i, j in enumerate(range(0, len(samples), per_sequence))]
    for s in range(0, len(seqs), per_shard):
        write_shard(shards / f"shard-{s // per_shard:06d}.tar", seqs[s:s + per_shard])
    return folder


@pytest.fixture(scope="session")
def tiny_run(tiny_assets, tmp_path_factory):
    """8 packed sequences of 3 samples (text, image, audio) in 2 shards."""
    folder = tmp_path_factory.mktemp("train-run")
    return write_run(folder, tiny_samples(folder, tiny_assets / "tokenizer", 24))


def train_overrides(assets: Path, *extra: str) -> list[str]:
    m = assets / "models"
    return [f"stages.tokenize.tokenizer={assets}/tokenizer", f"train.llm={m}/llm", f"train.vision={m}/vision",
            f"train.audio={m}/audio", "train.lr=3e-3", "train.val_every=0", *extra]
