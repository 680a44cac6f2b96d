"""Script-aware text units: they live in filters.text_units (the filters need them, and filters/
imports nothing from curate/); this module keeps the old import path."""

from filters.text_units import (
                                CJK_CHAR,
                                CJK_RANGES,
                                SENTENCE_END_BOTH_SCRIPTS,
                                UNIT_RE,
                                cjk_share,
                                has_cjk,
                                is_cjk,
                                sentences,
                                unit_count,
                                units,
)

__all__ = ["CJK_CHAR", "CJK_RANGES", "SENTENCE_END_BOTH_SCRIPTS", "UNIT_RE", "cjk_share", "has_cjk", "is_cjk",
           "sentences", "unit_count", "units"]
