"""Ctrl-C and SIGTERM stop a training run at the end of its optimiser step, with a checkpoint.

Left alone, Ctrl-C raises KeyboardInterrupt wherever it lands (inside autograd, as often as not) and loses every
step since the last checkpoint, which on a CPU can be many minutes of work. Here the first signal only sets a
flag; at the end of the step the Trainer saves a checkpoint and stops, and the run is marked interrupted. A second
signal acts at once, as it would have without us (Ctrl-C raises, SIGTERM ends the process).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import TrainerCallback

from tunelab import distributed
from tunelab.runs import RunDir, RunInterrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(TrainerCallback):
    """Asks the Trainer to save and stop at the first step end after SIGINT or SIGTERM arrived (while
    `listening`). Under torchrun, rank 0's flag decides for every rank, so they save and stop at the same step."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_at: int | None = None

    @contextmanager
    def listening(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM inside the block. A signal the process was started ignoring (`nohup`, a
        background job, a pytest-xdist worker's SIGINT) stays ignored, and only the main thread can have
        handlers: elsewhere signals keep their usual effect."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            number: signal.getsignal(number) or signal.SIG_DFL
            for number in SIGNALS
            if signal.getsignal(number) is not signal.SIG_IGN
        }

        def handle(number, frame):
            self.received = number
            signal.signal(number, previous[number])  # the next one acts at once
            # os.write, not print: a handler runs between bytecodes, maybe inside a write to the same stream
            os.write(2, b"\nstopping at the end of this step to save a checkpoint (signal again to abort at once)\n")

        for number in previous:
            signal.signal(number, handle)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.share_from_main(self.received is not None):
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step

    def raise_if_stopped(self, run: RunDir) -> None:
        """After training: a run the signal stopped is marked interrupted at its step, and `RunInterrupted` says
        how to resume it. A signal that came after the last step, too late to stop anything, takes its usual
        effect now."""
        if self.received is None:
            return
        if self.stopped_at is None:
            signal.raise_signal(self.received)
            return
        if distributed.is_main_process():
            run.update_state(state="interrupted", interrupted_at_step=self.stopped_at)
        raise RunInterrupted(
            f"interrupted at step {self.stopped_at}; resume with tunelab train --resume {run.path}",
            128 + self.received,
        )
