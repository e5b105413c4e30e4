"""When a run stops before its last step: on Ctrl-C / SIGTERM, or when trainer.max_minutes runs out.

Every rank catches the signal and measures its own time; they agree through a sum over ranks, so
all of them stop after the same step. A signal that lands inside a reward's own code abandons that
call (``StopRequested``): a reward that hangs cannot hold the run, and the step it belonged to is
abandoned (see ``scoring.score_rollout``).
"""

from __future__ import annotations

import signal
import sys

from tunecli.rewards import reward_running
from tunecli.trainer import distributed
from tunecli.trainer.metrics import now


class StopRequested(BaseException):
    """Raised into a reward call by Ctrl-C / SIGTERM. A BaseException, like KeyboardInterrupt, so that a
    reward's own ``except Exception`` does not swallow it."""


class StopRules:
    def __init__(self, max_minutes: float | None):
        self.max_minutes = max_minutes
        self.requested = False  # a signal arrived on this rank
        self.started = now()  # the time budget counts from here (model loading included)
        self.last_validation_s = 0.0
        self._step_times: list[float] = []

    def install_signal_handlers(self) -> None:
        try:
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread (e.g. a test runner thread): no handler
            pass

    def _on_signal(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGTERM:
            # Already stopping. SLURM signals every process of a step and torchrun passes the signal
            # on to its workers again: only a person's second Ctrl-C means "quit without saving".
            return
        if self.requested:  # second Ctrl-C: leave now, without a checkpoint
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.request()
        if reward_running():  # only there: the trainer's own code always finishes what it started
            raise StopRequested

    def request(self) -> None:
        """Stop after the current step (or abandon it); what a first Ctrl-C does."""
        self.requested = True
        if distributed.is_main():
            print(
                "\nStopping: the current step is finished or abandoned, then a checkpoint is written. "
                "Press Ctrl-C again to quit without saving.",
                file=sys.stderr,
                flush=True,
            )

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank got a signal (they must stop at the same step)."""
        return distributed.all_reduce_sum(float(self.requested)) > 0

    def step_done(self, seconds: float) -> None:
        self._step_times.append(seconds)

    def out_of_time(self) -> bool:
        """Would the next step plus the final validation overrun trainer.max_minutes?"""
        if self.max_minutes is None or not self._step_times:
            return False
        recent = self._step_times[-5:]
        needed = now() - self.started + sum(recent) / len(recent) + self.last_validation_s
        # Every rank must take the same decision: the slowest rank's view wins.
        return distributed.all_reduce_sum(float(needed > self.max_minutes * 60)) > 0
