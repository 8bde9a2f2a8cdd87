"""Progress of a scoring pass (generating answers, ranking labels, perplexity): examples done, rate and time left.

Scoring a test set can take minutes (500 DialogSum summaries took 11 on two cores), so every pass shows a bar on
stderr. On a terminal it redraws in place; written to a log or a pipe it prints a whole line at the start, at most
every LOG_INTERVAL seconds and at the end, so `tunelab eval ... 2> eval.log` shows how far it got without filling
the log with redraws.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

LOG_INTERVAL = 30.0
"""Seconds between progress lines when stderr is not a terminal."""


class WholeLines:
    """A stream that writes each of tqdm's redraws (carriage return, bar, padding) as one line of its own, and
    drops the blank redraws that clear a bar: what a log file should hold."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(total: int, what: str, items: Iterable | None = None) -> tqdm:
    """A bar over `total` examples, labelled `what` (iterating `items`, when given), on the stderr of the moment
    (so a caller that redirects it, or a test that captures it, gets the bar)."""
    stream = sys.stderr
    terminal = stream.isatty()
    return tqdm(
        items,
        total=total,
        desc=what,
        unit="ex",
        file=stream if terminal else WholeLines(stream),
        mininterval=0.1 if terminal else LOG_INTERVAL,
        disable=False,  # tqdm's default hides the bar when stderr is not a terminal: a log should see progress too
    )
