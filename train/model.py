"""The omni model the shards train: vision tower + audio encoder + causal LLM, from local folders.

- Vision (InternVL 2.5, sec. 3.1): a transformers vision tower over 448x448 tiles, pixel
  unshuffle (2x2 neighbouring patch tokens merged into one, x0.5 per side) and a 2-layer MLP, so
  one tile gives (S / patch / 2)^2 embeddings (256 for 448 / 14); the shards' tokens_per_tile must
  agree, checked before step 1.
- Audio (M2-omni): a Whisper encoder over 16 kHz log-mel 30 s windows (longer clips are cut into
  windows), 1x3 average pooling and an MLP, so a clip of d seconds gives ceil(d * 50 / 3)
  embeddings, the count the tokenize stage wrote as <AUDIO_CONTEXT> tokens.
- LLM: any AutoModelForCausalLM; media embeddings replace the <IMG_CONTEXT> / <AUDIO_CONTEXT>
  token embeddings in order. A count mismatch names the sample.
Nothing is downloaded: every part loads with from_pretrained from a local folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from packing.format import AUDIO_CONTEXT, IMG_CONTEXT


class ModelError(ValueError):
    """The model folders and the shards disagree; the message names both numbers."""


def pixel_unshuffle(x: torch.Tensor, grid: int, factor: int = 2) -> torch.Tensor:
    """(N, grid*grid, C) patch tokens -> (N, (grid/f)^2, C*f*f): each f x f block becomes one token."""
    n, _, c = x.shape
    x = x.view(n, grid // factor, factor, grid // factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (grid // factor) ** 2, c * factor * factor)


def projector(d_in: int, d_out: int) -> nn.Sequential:
    """InternVL's mlp1: LayerNorm, Linear, GELU, Linear."""
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class OmniModel(nn.Module):
    def __init__(self, llm, vision, audio, feature_extractor, image_token: int, audio_token: int,
                 audio_fps: float = 50.0, audio_pooling: int = 3):
        super().__init__()
        self.llm, self.vision, self.audio = llm, vision, audio
        self.feature_extractor = feature_extractor
        self.image_token, self.audio_token = image_token, audio_token
        self.audio_fps, self.audio_pooling = audio_fps, audio_pooling
        d = llm.config.hidden_size
        vcfg = vision.config
        self.grid = vcfg.image_size // vcfg.patch_size
        self.tile_size = vcfg.image_size
        self.vision_proj = projector(vcfg.hidden_size * 4, d)
        self.audio_proj = projector(audio.config.d_model, d)

    @property
    def tokens_per_tile(self) -> int:
        return (self.grid // 2) ** 2

    def check_shards(self, tokens_per_tile: int, audio_fps: float, audio_pooling: int) -> None:
        if tokens_per_tile != self.tokens_per_tile:
            raise ModelError(
                f"the vision tower gives {self.tokens_per_tile} tokens per tile ({self.grid}x{self.grid} patches, "
                f"pixel-unshuffle x0.5) but the shards were tokenized with stages.tokenize.tokens_per_tile="
                f"{tokens_per_tile}; use a tower with image_size/patch_size = {2 * math.isqrt(tokens_per_tile)} "
                f"or re-tokenize")
        if (audio_fps, audio_pooling) != (self.audio_fps, self.audio_pooling):
            raise ModelError(f"the audio encoder gives {self.audio_fps} frames/s pooled by {self.audio_pooling} "
                             f"but the shards used {audio_fps} frames/s pooled by {audio_pooling}")

    # ------------------------------------------------------------------ media encoders
    def encode_tiles(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n_tiles, 3, S, S) in [0, 1] -> (n_tiles * tokens_per_tile, d_llm)."""
        if pixel_values.shape[-1] != self.tile_size:
            raise ModelError(f"tiles are {pixel_values.shape[-1]} px but the vision tower takes {self.tile_size} px")
        mean = torch.tensor([0.485, 0.456, 0.406], device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=pixel_values.device).view(1, 3, 1, 1)
        x = ((pixel_values - mean) / std).to(next(self.vision.parameters()).dtype)
        h = self.vision(pixel_values=x).last_hidden_state
        if h.shape[1] == self.grid * self.grid + 1:  # CLIP-style class token
            h = h[:, 1:]
        h = pixel_unshuffle(h, self.grid)
        return self.vision_proj(h.to(self.vision_proj[0].weight.dtype)).flatten(0, 1)

    def encode_clip(self, wave, seconds: float | None = None) -> torch.Tensor:
        """One 16 kHz clip -> (ceil(seconds * fps / pooling), d_llm), 30 s Whisper windows."""
        import numpy as np

        sr = self.feature_extractor.sampling_rate
        wave = np.asarray(wave, dtype=np.float32)
        seconds = len(wave) / sr if seconds is None else seconds
        n_tokens = max(1, math.ceil(seconds * self.audio_fps / self.audio_pooling))
        window = self.feature_extractor.n_samples
        chunks = [wave[i:i + window] for i in range(0, max(len(wave), 1), window)] or [wave]
        feats = self.feature_extractor(chunks, sampling_rate=sr, return_tensors="pt").input_features
        dev = next(self.audio.parameters()).device
        h = self.audio(feats.to(dev, next(self.audio.parameters()).dtype)).last_hidden_state
        frames_per_window = h.shape[1]
        valid = [min(frames_per_window, math.ceil(len(c) / sr * self.audio_fps)) for c in chunks]
        h = torch.cat([h[k, :v] for k, v in enumerate(valid)])
        need = n_tokens * self.audio_pooling
        if h.shape[0] < need:  # rounding of the clip length: repeat the last frame
            h = torch.cat([h, h[-1:].expand(need - h.shape[0], -1)])
        h = nn.functional.avg_pool1d(h[:need].T.unsqueeze(0), self.audio_pooling).squeeze(0).T
        return self.audio_proj(h.to(self.audio_proj[0].weight.dtype))

    # ------------------------------------------------------------------ embeddings
    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        """Token embeddings with media embeddings in place of the context tokens, in order."""
        table = self.llm.get_input_embeddings()
        check_media_counts(batch["input_ids"], batch["samples"], self.image_token, self.audio_token,
                           self.tokens_per_tile, self.audio_fps, self.audio_pooling)  # on the CPU ids: no sync
        ids = batch["input_ids"].to(table.weight.device)
        emb = table(ids)
        is_img, is_aud = ids == self.image_token, ids == self.audio_token
        if is_img.any():
            img = self.encode_tiles(batch["pixel_values"].to(emb.device))
            if img.shape[0] != int(is_img.sum()):
                raise ModelError(f"sequence {batch.get('key')}: {int(is_img.sum())} <IMG_CONTEXT> tokens but "
                                 f"{img.shape[0]} image embeddings from {batch['pixel_values'].shape[0]} tiles")
            emb = emb.masked_scatter(is_img.unsqueeze(-1), img.to(emb.dtype))
        if is_aud.any():
            durations = [m.get("duration") for s in batch["samples"] for m in s["media"] if m["kind"] == "audio"]
            aud = torch.cat([self.encode_clip(w, d) for w, d in zip(batch["audio"], durations)])
            emb = emb.masked_scatter(is_aud.unsqueeze(-1), aud.to(emb.dtype))
        return emb

    def forward(self, batch: dict[str, Any], packed: bool = True) -> torch.Tensor:
        """Logits (L, V) of one packed sequence; packed=False lets attention cross samples (tests only)."""
        from train.attention import packed_kwargs

        emb = self.embed(batch).unsqueeze(0)
        kw = packed_kwargs(batch["cu_seqlens"].to(emb.device), packed)
        out = self.llm(inputs_embeds=emb, position_ids=batch["position_ids"].to(emb.device).unsqueeze(0),
                       use_cache=False, **kw)
        return out.logits[0]


def check_media_counts(ids: torch.Tensor, samples: list[dict[str, Any]], image_token: int, audio_token: int,
                       tokens_per_tile: int, audio_fps: float, audio_pooling: int) -> None:
    """Per sample: context tokens in its span == embeddings its media will give; else name the sample."""
    for s in samples:
        span = ids[s["token_offset"]:s["token_offset"] + s["n_tokens"]]
        tiles = sum(m.get("tiles", 1) if m["kind"] == "image" else len(m.get("frames", []))
                    for m in s["media"] if m["kind"] in ("image", "video"))
        want = tiles * tokens_per_tile
        have = int((span == image_token).sum())
        if have != want:
            raise ModelError(f"sample {s.get('id')}: {have} <IMG_CONTEXT> tokens but its {tiles} tiles give "
                             f"{want} image embeddings")
        want = sum(max(1, math.ceil(m["duration"] * audio_fps / audio_pooling))
                   for m in s["media"] if m["kind"] == "audio")
        have = int((span == audio_token).sum())
        if have != want:
            raise ModelError(f"sample {s.get('id')}: {have} <AUDIO_CONTEXT> tokens but its audio gives "
                             f"{want} audio embeddings")


def load_model(llm: str | Path, vision: str | Path, audio: str | Path, tokenizer: str | Path,
               audio_fps: float = 50.0, audio_pooling: int = 3, dtype=torch.float32) -> OmniModel:
    """Assemble the omni model from three local folders and the tokenizer the shards were made with."""
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from train.attention import register_packed_attention

    hf_logging.disable_progress_bar()  # three "Loading weights" bars would bury the step line
    for name, path in (("llm", llm), ("vision", vision), ("audio", audio), ("tokenizer", tokenizer)):
        if not Path(path).is_dir():
            raise ModelError(f"train.{name}: folder {path} not found (run `curate demo-data DIR` for tiny ones)")
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    ids = {t: tok.convert_tokens_to_ids(t) for t in (IMG_CONTEXT, AUDIO_CONTEXT)}
    impl = register_packed_attention()
    lm = AutoModelForCausalLM.from_pretrained(str(llm), attn_implementation=impl, dtype=dtype)
    if lm.config.vocab_size < len(tok):
        raise ModelError(f"train.llm: vocab_size {lm.config.vocab_size} < {len(tok)} tokens of {tokenizer}")
    vis = AutoModel.from_pretrained(str(vision), dtype=dtype)
    vis = getattr(vis, "vision_model", vis) if not hasattr(vis.config, "patch_size") else vis
    aud = AutoModel.from_pretrained(str(audio), dtype=dtype)
    aud = aud.get_encoder() if hasattr(aud, "get_encoder") else aud
    fe = AutoFeatureExtractor.from_pretrained(str(audio))
    return OmniModel(lm, vis, aud, fe, ids[IMG_CONTEXT], ids[AUDIO_CONTEXT], audio_fps, audio_pooling)


def write_tiny_models(out_dir: str | Path, tokenizer: str | Path, seed: int = 0) -> dict[str, str]:
    """Random-weight vision / audio / LLM folders small enough to train on CPU (configs via save_pretrained)."""
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        CLIPVisionModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    out = Path(out_dir)
    torch.manual_seed(seed)
    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer)))
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                                       tie_word_embeddings=True))
    llm.save_pretrained(out / "llm")
    vis = CLIPVisionModel(CLIPVisionConfig(image_size=448, patch_size=14, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2))
    vis.save_pretrained(out / "vision")
    aud = WhisperModel(WhisperConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
                                     max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                     decoder_start_token_id=1, begin_suppress_tokens=None, suppress_tokens=None))
    aud.save_pretrained(out / "audio")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out / "audio")
    return {k: str(out / k) for k in ("llm", "vision", "audio")}
