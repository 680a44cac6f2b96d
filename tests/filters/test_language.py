"""fastText language id with the lid.176.ftz that `make setup` installs."""

import pytest

from filters.language import UNDETERMINED, LanguageId, language_allowed, lid_path

SAMPLES = {
    "en": "The function returns a new list containing all items from the iterable in ascending order.",
    "fr": "La fonction renvoie une nouvelle liste contenant tous les éléments de l'itérable dans l'ordre croissant.",
    "de": "Die Funktion gibt eine neue Liste zurück, die alle Elemente des Iterables "
          "in aufsteigender Reihenfolge enthält.",
    "es": "La función devuelve una nueva lista que contiene todos los elementos del iterable en orden ascendente.",
    "zh": "该函数返回一个新列表，其中按升序包含可迭代对象中的所有元素。这是排序的基本方法。",
}


@pytest.fixture(scope="module")
def lid():
    return LanguageId(lid_path(None))


def test_bundled_model_identifies_languages(lid):
    for lang, text in SAMPLES.items():
        got, prob = lid.predict(text)
        assert got == lang and 0.5 < prob <= 1.0, (lang, got, prob)


def test_short_text_is_undetermined_and_never_rejected(lid):
    assert lid.predict("<image>\nOK 42") == (UNDETERMINED, 0.0)
    assert language_allowed(UNDETERMINED, 0.0, ["en"], 0.5)


def test_keep_list_and_confidence():
    assert language_allowed("fr", 0.9, None, 0.5)
    assert not language_allowed("fr", 0.9, ["en"], 0.5)
    assert language_allowed("fr", 0.3, ["en"], 0.5)
    assert language_allowed("en", 0.99, ["en", "zh"], 0.5)


def test_missing_configured_model_fails_with_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="stages.filter.lid_model"):
        lid_path(str(tmp_path / "nope.ftz"))


def test_has_letters_counts_letters_of_any_script_up_to_n():
    from filters.language import has_letters

    assert has_letters("a" * 20, 20) and not has_letters("a" * 19, 20)
    assert not has_letters("1234 5678 !!!! " * 10 + "abc", 20)
    assert has_letters("这是一个中文句子，用来测试语言识别是否正确。", 20)
    assert has_letters("x" + " 9" * 1000 + "y" * 19, 20) and not has_letters("", 1)
