"""open_clip similarity from a local folder: a tiny random model saved here and loaded back."""

import json

import pytest
from PIL import Image

from filters.clipscore import ClipScorer, check_clip_folder

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def save_tiny_clip(folder, seed=0):
    """An open_clip export (config + weights) of a random tiny CLIP, as a user would ship one."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def images():
    return [Image.new("RGB", (64, 48), (220, 30, 30)), Image.new("RGB", (40, 90), (20, 40, 200))]


def test_scores_are_cosines_of_the_saved_model(tiny_clip):
    import open_clip
    import torch

    folder, model = tiny_clip
    scorer = ClipScorer(folder, "cpu")
    texts = ["a red square", "a tall blue rectangle"]
    scores = scorer.score(images(), texts)
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores)
    # the same numbers from the in-memory model: the weights really came back from disk
    model.eval()
    px = torch.stack([scorer.preprocess(im) for im in images()])
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")(texts)
    with torch.no_grad():
        want = (model.encode_image(px, normalize=True) * model.encode_text(tok, normalize=True)).sum(-1)
    assert scores == pytest.approx(want.tolist(), abs=1e-5)
    assert scorer.score([], []) == []


def test_a_different_model_gives_different_scores(tiny_clip, tmp_path):
    other, _ = save_tiny_clip(tmp_path / "other", seed=1)
    a = ClipScorer(tiny_clip[0], "cpu").score(images(), ["red", "blue"])
    b = ClipScorer(other, "cpu").score(images(), ["red", "blue"])
    assert a != pytest.approx(b, abs=1e-4)


def test_incomplete_folders_fail_before_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder"):
        check_clip_folder(tmp_path / "missing")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        check_clip_folder(tmp_path / "m")
    (tmp_path / "m" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        check_clip_folder(tmp_path / "m")
