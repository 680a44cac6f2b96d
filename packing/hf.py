"""Read the shards with Hugging Face `datasets`, no loading script: its "webdataset" builder.

The builder turns every tar member name into a column and infers the column types from the
first five sequences. Our sequences all have the same four members (packing.format.MEMBERS), but
types inferred from five sequences can miss what later ones hold (a video's frame list, audio
when the first five have none), so `packed_features()` declares them: the media member becomes
lists of `Image()` and `Audio()` (PIL images and torchcodec decoders when read), the JSON a struct.

    from datasets import load_dataset
    from packing.hf import packed_features
    ds = load_dataset("webdataset", data_files={"train": "runs/sft-stage3/shards/shard-*.tar"},
                      split="train", features=packed_features())

`hf_to_tensors` turns one such row (read with `packed_features(decode=False)`) into the same
tensors as packing.loader.iter_packed.
"""

from __future__ import annotations

from typing import Any

from packing.format import IDS_MEMBER, JSON_MEMBER, LABELS_MEMBER, MEDIA_MEMBER


def packed_features(decode: bool = True):
    """The datasets.Features of a packed sequence; decode=False keeps media as {"path", "bytes"}."""
    from datasets import Audio, Features, Image, List, Value

    media = {"kind": Value("string"), "sha256": Value("string"), "member": Value("string"),
             "frames": List(Value("string")), "grid": List(Value("int64")), "size": List(Value("int64")),
             "tiles": Value("int64"), "duration": Value("float64")}
    sample = {"id": Value("string"), "orig_id": Value("string"), "source": Value("string"), "modality": Value("string"),
              "token_offset": Value("int64"), "n_tokens": Value("int64"), "tile_offset": Value("int64"),
              "n_tiles": Value("int64"), "n_response_tokens": Value("int64"), "augment": Value("bool"),
              "media": List(media)}
    return Features({
        "__key__": Value("string"),
        "__url__": Value("string"),
        IDS_MEMBER: List(Value("int32")),
        JSON_MEMBER: {"sequence": Value("int64"), "n_tokens": Value("int64"), "n_tiles": Value("int64"),
                 "samples": List(sample)},
        LABELS_MEMBER: List(Value("int32")),
        MEDIA_MEMBER: {"audio": List(Audio(decode=decode)), "images": List(Image(decode=decode))},
    })


def drop_nulls(value: Any) -> Any:
    """Undo the struct fill-in: keys a sample's JSON did not have come back from datasets as None."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def hf_to_tensors(row: dict[str, Any], decode: bool = True, tile_size: int = 448) -> dict[str, Any]:
    """A row read with packed_features(decode=False) as packing.loader.to_tensors's dict."""
    from packing.loader import to_tensors

    media = row[MEDIA_MEMBER]
    if any(not isinstance(m, dict) for kind in ("images", "audio") for m in media[kind]):
        raise ValueError("hf_to_tensors needs the media as bytes: "
                         "load with features=packed_features(decode=False)")
    raw = {"__key__": row["__key__"], JSON_MEMBER: drop_nulls(row[JSON_MEMBER]), IDS_MEMBER: row[IDS_MEMBER],
           LABELS_MEMBER: row[LABELS_MEMBER], MEDIA_MEMBER: media}
    return to_tensors(raw, decode=decode, tile_size=tile_size)
