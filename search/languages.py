"""Which languages the served model reads, and whether a query is written in them.

A model's languages come from its sealed bundle (ISO 639-1 codes given to
``model_seal --languages``). A query's script is read from the Unicode names of
its letters; a script none of the model's languages is written in earns the
query a warning, because the model then sees little more than unknown tokens.
"""
from __future__ import annotations

import unicodedata
from collections import Counter

from django.utils.translation import get_language_info
from django.utils.translation import gettext_lazy as _

# Scripts told apart, by the first word(s) of the Unicode character name.
SCRIPT_NAMES = {
    "Han": _("Chinese characters (Han)"),
    "Hiragana": _("Japanese kana"),
    "Katakana": _("Japanese kana"),
    "Hangul": _("Korean Hangul"),
    "Cyrillic": _("Cyrillic"),
    "Arabic": _("Arabic script"),
    "Hebrew": _("Hebrew script"),
    "Greek": _("Greek script"),
    "Devanagari": _("Devanagari"),
    "Bengali": _("Bengali script"),
    "Tamil": _("Tamil script"),
    "Telugu": _("Telugu script"),
    "Kannada": _("Kannada script"),
    "Malayalam": _("Malayalam script"),
    "Gujarati": _("Gujarati script"),
    "Gurmukhi": _("Gurmukhi"),
    "Thai": _("Thai script"),
    "Lao": _("Lao script"),
    "Khmer": _("Khmer script"),
    "Myanmar": _("Myanmar script"),
    "Georgian": _("Georgian script"),
    "Armenian": _("Armenian script"),
    "Ethiopic": _("Ethiopic script"),
    "Tibetan": _("Tibetan script"),
    "Sinhala": _("Sinhala script"),
    "Latin": _("Latin letters"),
}

# The languages (ISO 639-1) written in each non-Latin script.
SCRIPT_LANGUAGES = {
    "Han": {"zh", "ja"},
    "Hiragana": {"ja"},
    "Katakana": {"ja"},
    "Hangul": {"ko"},
    "Cyrillic": {"ru", "uk", "be", "bg", "sr", "mk", "kk", "ky", "mn", "tg", "tt", "ba", "cv", "ce", "os", "av",
                 "kv", "ab", "cu"},
    "Arabic": {"ar", "fa", "ur", "ps", "ku", "sd", "ug", "ks"},
    "Hebrew": {"he", "yi"},
    "Greek": {"el"},
    "Devanagari": {"hi", "mr", "ne", "sa", "pi"},
    "Bengali": {"bn", "as"},
    "Tamil": {"ta"},
    "Telugu": {"te"},
    "Kannada": {"kn"},
    "Malayalam": {"ml"},
    "Gujarati": {"gu"},
    "Gurmukhi": {"pa"},
    "Thai": {"th"},
    "Lao": {"lo"},
    "Khmer": {"km"},
    "Myanmar": {"my"},
    "Georgian": {"ka"},
    "Armenian": {"hy"},
    "Ethiopic": {"am", "ti"},
    "Tibetan": {"bo", "dz"},
    "Sinhala": {"si"},
}
# Languages written only in a non-Latin script: every other code reads Latin letters.
_NON_LATIN_ONLY = set().union(*SCRIPT_LANGUAGES.values()) - {"sr", "ku", "uz", "az", "tk", "kk", "tt"}


def letter_script(char: str) -> str | None:
    """The script of one letter, or None for what is not a letter or not told apart."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    if name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
        return "Han"
    first = name.split(" ", 1)[0].capitalize()
    if first == "Halfwidth" or first == "Fullwidth":
        words = name.split(" ")
        first = words[1].capitalize() if len(words) > 1 else first
        if first == "Ideographic":
            return "Han"
    return first if first in SCRIPT_NAMES else None


def query_scripts(text: str) -> list[str]:
    """The scripts a query is written in, most letters first.

    A script counts when it holds at least two letters or every letter of the
    query, so a stray symbol (π in "π r squared") does not count.
    """
    counts = Counter(s for s in map(letter_script, text) if s is not None)
    total = sum(counts.values())
    return [script for script, n in counts.most_common() if n >= 2 or n == total]


def script_is_read(script: str, languages: tuple[str, ...] | list[str]) -> bool:
    if script == "Latin":
        return any(code not in _NON_LATIN_ONLY for code in languages)
    return bool(SCRIPT_LANGUAGES.get(script, set()) & set(languages))


def unread_scripts(text: str, languages: tuple[str, ...] | list[str]) -> list[str]:
    """The query's scripts that none of ``languages`` is written in.

    Empty when the model's languages are not stated: nothing is known to warn about.
    """
    if not languages:
        return []
    return [script for script in query_scripts(text) if not script_is_read(script, languages)]


def language_name(code: str) -> str:
    """The language's name in the active language (Django's catalogue), or the code itself."""
    try:
        return str(get_language_info(code)["name_translated"])
    except KeyError:
        return code


def script_name(script: str) -> str:
    return str(SCRIPT_NAMES.get(script, script))
