"""The reranker's work written once, served synchronously or asynchronously.

Ranking is pure work (formatting, de-duplication, cache lookups, windows, sorting) around one kind of I/O: asking a
scorer for scores. A plan is a generator that yields each :class:`ScoreRequest` and receives its scores. :func:`run`
answers requests with ``scorer.score``; :func:`arun` awaits the scorer's own ``ascore`` where it has one (a rerank
server: the network wait stays on the event loop, no thread) and runs ``score`` in a worker thread otherwise (a
local model). So the sync and async paths cannot drift apart, and a cascade may mix scorers of both kinds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import Generic, TypeVar

from llama_index_twostage.stage2.scorers import AsyncPairScorer, PairScorer

T = TypeVar("T")


@dataclass(frozen=True)
class ScoreRequest:
    """Scores wanted from ``scorer``: one per text, in order."""

    scorer: PairScorer
    query: str
    texts: list[str]


Plan = Generator[ScoreRequest, list[float], T]


@dataclass(frozen=True)
class Done(Generic[T]):
    """What a finished plan returned (a ``StopIteration`` cannot travel back from a worker thread)."""

    value: T


def advance(plan: Plan[T], scores: list[float] | None) -> ScoreRequest | Done[T]:
    """Run the plan's pure work up to its next request (``scores`` answer the previous one; None to start)."""
    try:
        return next(plan) if scores is None else plan.send(scores)
    except StopIteration as finished:
        return Done(finished.value)


def run(plan: Plan[T]) -> T:
    """Carry out ``plan`` in this thread."""
    step = advance(plan, None)
    while isinstance(step, ScoreRequest):
        step = advance(plan, step.scorer.score(step.query, step.texts))
    return step.value


async def arun(plan: Plan[T]) -> T:
    """Carry out ``plan`` without blocking the event loop: its pure steps may tokenize (truncation counts, windows),
    so they run in a worker thread; each request is awaited (:func:`ascore`)."""
    step = await asyncio.to_thread(advance, plan, None)
    while isinstance(step, ScoreRequest):
        step = await asyncio.to_thread(advance, plan, await ascore(step))
    return step.value


async def ascore(request: ScoreRequest) -> list[float]:
    """The scorer's own ``ascore`` where it has one; else its ``score`` in a worker thread."""
    scorer = request.scorer
    if isinstance(scorer, AsyncPairScorer):
        return await scorer.ascore(request.query, request.texts)
    return await asyncio.to_thread(scorer.score, request.query, request.texts)
