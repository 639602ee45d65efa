"""The calibration set shipped with the package: queries, each against passages that answer, mention or miss it.

``auto`` ranks it with fp32 and each candidate backend; static int8 reads it for its activation ranges. Its
passages are a sentence each, far shorter than real candidates (a SciFact abstract is about 200 words), and a
quantized model that ranks short passages like fp32 need not rank long ones alike (its activations, attention
spread included, depend on length). So each query is also asked against *lengthened* passages, each joining
:data:`JOINED` consecutive passages of the query into one of abstract length: the same text, no dataset's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
JOINED = 12
"""Passages joined into one lengthened passage: 12 sentences of about 16 words, near a SciFact abstract's length."""

Pairs = Sequence[tuple[str, list[str]]]
"""Queries, each with the passages it is scored against."""


def calibration_set() -> list[tuple[str, list[str]]]:
    """Every shipped query against its short passages, then against as many lengthened ones."""
    data = json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))
    short = [(entry["query"], list(entry["passages"])) for entry in data["queries"]]
    return short + [(query, lengthened(passages)) for query, passages in short]


def lengthened(passages: list[str], joined: int = JOINED) -> list[str]:
    """One passage per passage: it and the ``joined - 1`` that follow it (wrapping around), joined."""
    count = len(passages)
    return [" ".join(passages[(start + offset) % count] for offset in range(joined)) for start in range(count)]
