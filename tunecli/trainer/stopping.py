"""When a run stops before its last step: on Ctrl-C / SIGTERM, or when a time budget runs out
(trainer.max_minutes for this launch, trainer.total_training_minutes for the whole run).

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
    def __init__(self, max_minutes: float | None, total_minutes: float | None = None):
        self.max_minutes, self.total_minutes = max_minutes, total_minutes
        self.requested = False  # a signal arrived on this rank
        self.started = now()  # the time budgets count from here (model loading included)
        self.elapsed_before = 0.0  # the run's seconds in earlier launches (a resumed run's checkpoint)
        self.length_spent = False  # what is left of total_training_minutes holds no step
        self.last_validation_s = 0.0
        self._step_times: list[float] = []

    def run_elapsed(self) -> float:
        """Seconds of the whole run so far: earlier launches and this one; all of the run's length once
        the rest was too short for a step (so a relaunch takes none either)."""
        elapsed = self.elapsed_before + now() - self.started
        return max(elapsed, self.total_minutes * 60) if self.length_spent else elapsed

    def run_progress(self) -> float:
        """How much of trainer.total_training_minutes is spent (0 without it): what a cosine LR follows.
        A collective when set: every rank must step with the same learning rate (the ranks' mean)."""
        if not self.total_minutes:
            return 0.0
        return distributed.all_reduce_mean({"elapsed": self.run_elapsed()})["elapsed"] / (self.total_minutes * 60)

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
        return self._any_rank(self.requested)

    def step_done(self, seconds: float) -> None:
        self._step_times.append(seconds)

    def out_of_time(self) -> str | None:
        """The time budget the next step plus the final validation would overrun, if any: the same answer
        on every rank (the slowest rank's view wins). trainer.max_minutes lets a launch take one step
        first; trainer.total_training_minutes counts earlier launches too, so a spent run takes none."""
        recent = self._step_times[-5:]
        ahead = (sum(recent) / len(recent) if recent else 0.0) + self.last_validation_s
        if self.max_minutes is not None and recent and self._any_rank(now() - self.started + ahead > self.max_minutes * 60):
            return f"Time budget of {self.max_minutes:g} min (trainer.max_minutes)"
        if self.total_minutes is not None and self._any_rank(self.run_elapsed() + ahead >= self.total_minutes * 60):
            self.length_spent = True
            return f"The run's length of {self.total_minutes:g} min (trainer.total_training_minutes)"
        return None

    @staticmethod
    def _any_rank(flag: bool) -> bool:
        return distributed.all_reduce_sum(float(flag)) > 0
