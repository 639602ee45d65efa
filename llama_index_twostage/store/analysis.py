"""How text becomes BM25 terms, per language: what the lexical index stores and what a query is matched on.

An index and its queries must go through the same analyser, so the index records the one it was built with and
refuses another (see :class:`~llama_index_twostage.store.lexical.TantivyIndex`).

- A language with a stemmer in tantivy: words (letters and digits), lowercased, that language's stop words removed
  where tantivy has a list, stemmed (``english`` is Porter's stemmer).
- ``cjk`` (Chinese, Japanese, Korean): those scripts are written without spaces between words, so a run of their
  characters is one "word" to a word tokenizer, and only the exact run would ever match. Each run becomes its
  overlapping character bigrams instead (``维生素`` -> ``维生``, ``生素``), as Lucene's CJK analyser does, which matches
  words without a dictionary; other text in the same document is tokenized as words, lowercased, not stemmed.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

import tantivy

# tantivy's stemmers, and character bigrams for Chinese, Japanese and Korean.
LexicalLanguage = Literal[
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
    "cjk",
]

LEXICAL_LANGUAGES: tuple[str, ...] = get_args(LexicalLanguage)
_STOP_WORD_LISTS = frozenset(
    "danish dutch english finnish french german hungarian italian norwegian portuguese russian spanish swedish".split()
)
_LONGEST_TOKEN = 40  # longer "words" (base64, hashes) are dropped, as tantivy's default analyser does

# Han (with extensions and compatibility ideographs), Hiragana, Katakana (with its extensions and half-width forms),
# Hangul syllables and jamo.
_CJK_RUN = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    "\uff66-\uff9f\U00020000-\U0002ffff]+"
)


def cjk_bigrams(text: str) -> str:
    """``text`` with each run of CJK characters replaced by its overlapping bigrams (a lone character stays)."""

    def bigrams(run: re.Match[str]) -> str:
        characters = run.group()
        return " " + " ".join(characters[start : start + 2] for start in range(max(1, len(characters) - 1))) + " "

    return _CJK_RUN.sub(bigrams, text)


class Analyser:
    """The analysis of one language: ``prepare`` rewrites text before tantivy's ``analyzer`` tokenizes it; both
    indexing and querying go through :meth:`index_text` and :meth:`terms`."""

    def __init__(self, language: LexicalLanguage = "english") -> None:
        if language not in LEXICAL_LANGUAGES:
            raise ValueError(f"lexical_language {language!r} is not one of: {', '.join(LEXICAL_LANGUAGES)}")
        self.language = language
        self.analyzer = self._build()

    @property
    def name(self) -> str:
        """What the index records: an index built with one analyser answers queries analysed by the same."""
        return f"twostage_{self.language}"

    def _build(self) -> tantivy.TextAnalyzer:
        builder = (
            tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(_LONGEST_TOKEN))
            .filter(tantivy.Filter.lowercase())
        )
        if self.language == "cjk":
            return builder.build()
        if self.language in _STOP_WORD_LISTS:
            builder = builder.filter(tantivy.Filter.stopword(self.language))
        return builder.filter(tantivy.Filter.stemmer(self.language)).build()

    def index_text(self, text: str) -> str:
        """The text as the index's analyser reads it."""
        return cjk_bigrams(text) if self.language == "cjk" else text

    def terms(self, text: str) -> list[str]:
        """The searchable terms of ``text``, in order, repeats kept."""
        return list(self.analyzer.analyze(self.index_text(text)))

    def __repr__(self) -> str:
        return f"Analyser({self.language!r})"
