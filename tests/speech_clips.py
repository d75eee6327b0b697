"""Caller speech for recognizer tests, synthesized in a fresh process each time.

libespeak-ng keeps state from one utterance to the next inside a process (its
pitch flutter advances, and neither reseeding nor espeak_Terminate resets it),
so the same text comes out slightly differently depending on what was spoken
before. The recognizer's decisions near its thresholds follow those small
differences; a fresh process per clip makes every clip a pure function of
(text, voice, rate), so the tests give the same answer in any order.
"""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def _synthesize(text: str, voice: str, rate_wpm: int) -> np.ndarray:
    from agent.tts_espeak import synthesize_8k

    return synthesize_8k(text, voice, rate_wpm)


@functools.cache
def speech_8k(text: str, voice: str, rate_wpm: int = 165) -> np.ndarray:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
        return pool.submit(_synthesize, text, voice, rate_wpm).result()
