"""Language id with fastText's lid.176 model (176 languages), kept or dropped per source.

The model is the `lid.176.ftz` file that `make setup` installs (filters.models.lid_model_path)
or a file named by `stages.filter.lid_model`. A record's language is that of its answers
(placeholders removed, newlines flattened: fastText predicts one line). Texts with fewer
than MIN_LETTERS letters are too short to identify and get "und" (undetermined), which no
list rejects; a sample is rejected only when the top language is not allowed and the model
is at least `min_score` sure of it, so mixed or code-heavy answers are not dropped on a guess.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from filters.heuristics import PLACEHOLDER

MIN_LETTERS = 20
UNDETERMINED = "und"


def lid_path(configured: str | None) -> Path:
    """The configured model file, or the one installed by `make setup`; fails with the fix."""
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise FileNotFoundError(f"stages.filter.lid_model: no fastText model at {path}")
        return path
    from filters.models import lid_model_path

    return lid_model_path()


class LanguageId:
    """Loads the fastText model once; predict() gives (language code, probability)."""

    def __init__(self, model_path: str | Path) -> None:
        import fasttext

        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load_model() notice
        self.model = fasttext.load_model(str(model_path))

    def predict(self, text: str) -> tuple[str, float]:
        flat = " ".join(PLACEHOLDER.sub(" ", text).split())
        if not has_letters(flat, MIN_LETTERS):
            return UNDETERMINED, 0.0
        labels, probs = self.model.predict(flat[:4000], k=1)
        return labels[0].removeprefix("__label__"), float(min(1.0, probs[0]))


def has_letters(text: str, n: int) -> bool:
    """At least n letters in text; stops at the n-th (counting a 1 KB answer cost more than predicting it)."""
    return next(itertools.islice((c for c in text if c.isalpha()), n - 1, None), None) is not None


def language_allowed(lang: str, prob: float, allowed: list[str] | None, min_score: float) -> bool:
    """True unless a confident prediction names a language outside `allowed` (None: all)."""
    if allowed is None or lang == UNDETERMINED or prob < min_score:
        return True
    return lang in allowed


__all__ = ["LanguageId", "lid_path", "language_allowed", "UNDETERMINED"]

