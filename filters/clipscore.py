"""Image-text agreement: open_clip cosine similarity between an image and its caption.

The model is a local open_clip folder (`stages.filter.clip_model`), the layout open_clip
itself reads with its `local-dir:` schema and that its hub exports use:
  open_clip_config.json   {"model_cfg": {...}, "preprocess_cfg": {...}}
  open_clip_model.safetensors | open_clip_pytorch_model.bin   the weights
Nothing is downloaded. The score is the cosine of the L2-normalised image and text
embeddings, in [-1, 1]; the filter stage rejects caption-like samples (one image, an
answer) whose score is below `clip_min_score`. With no model configured, no score is
produced at all (the column stays null) and the stage says the CLIP part was skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "open_clip_config.json"


def check_clip_folder(folder: str | Path) -> Path:
    """Fail before any work starts if the folder cannot hold an open_clip model."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"stages.filter.clip_model: no folder at {path}")
    config = path / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"stages.filter.clip_model: {path} has no {CONFIG_FILE} "
                                "(expected an open_clip export: model_cfg + weights)")
    if "model_cfg" not in json.loads(config.read_text()):
        raise ValueError(f"stages.filter.clip_model: {config} has no 'model_cfg' key")
    if not any(any(path.glob(p)) for p in ("*.safetensors", "*.bin", "*.pth")):
        raise FileNotFoundError(f"stages.filter.clip_model: {path} has no weights (.safetensors/.bin/.pth)")
    return path


class ClipScorer:
    """An open_clip model, its image transform and tokenizer, loaded once (per actor)."""

    def __init__(self, folder: str | Path, device: str | None = None) -> None:
        import open_clip
        import torch

        path = check_clip_folder(folder).resolve()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        name = f"local-dir:{path}"
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=self.device)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(name)

    def score(self, images: list[Any], texts: list[str]) -> list[float]:
        """Cosine similarity of each (PIL image, text) pair."""
        import torch

        if not images:
            return []
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            img = self.model.encode_image(pixels, normalize=True)
            txt = self.model.encode_text(tokens, normalize=True)
        return (img * txt).sum(dim=-1).float().cpu().tolist()


__all__ = ["ClipScorer", "check_clip_folder", "CONFIG_FILE"]
