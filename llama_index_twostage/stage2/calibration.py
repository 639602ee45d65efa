"""The calibration set shipped with the package: queries, each against passages that answer, mention or miss it.

``auto`` ranks it with fp32 and each candidate backend. Static int8 reads it for its activation ranges, and there
its one-sentence passages are not enough: activations (the attention spread above all) depend on length, and a real
candidate is an abstract of about 200 words. So the ranges also come from *lengthened* passages, each joining
:data:`JOINED` consecutive passages of a query: the same text, no dataset's. ``auto`` times the backends on them,
since speed depends on length too. They serve ranges and timing, not the ranking check: consecutive ones share all
but one sentence, so their scores nearly tie by construction, and any reduced precision swaps such ties (bf16 failed
there while it kept SciFact's top-10; README "Performance").
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
    """Every shipped query against its passages: what ``auto`` ranks."""
    data = json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))
    return [(entry["query"], list(entry["passages"])) for entry in data["queries"]]


def activation_calibration_set() -> list[tuple[str, list[str]]]:
    """Every shipped query against its passages, then against as many lengthened ones: what static int8's
    activation ranges are measured on."""
    short = calibration_set()
    return short + lengthened_set(short)


def lengthened_set(pairs: Pairs) -> list[tuple[str, list[str]]]:
    """Each query against its passages lengthened, at about a real candidate's length: what ``auto`` times backends
    on, since a backend's gain depends on the length (on a Xeon, ONNX Runtime took 0.98x torch's time on the short
    passages, 1.00x on these and 1.07x on SciFact's; OpenVINO 1.05x, 0.90x and 0.96x)."""
    return [(query, lengthened(list(passages))) for query, passages in pairs]


def lengthened(passages: list[str], joined: int = JOINED) -> list[str]:
    """One passage per passage: it and the ``joined - 1`` that follow it (wrapping around), joined."""
    count = len(passages)
    return [" ".join(passages[(start + offset) % count] for offset in range(joined)) for start in range(count)]
