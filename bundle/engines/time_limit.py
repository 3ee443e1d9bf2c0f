"""A wall-time budget for MONAI's engines: ignite's ``TimeLimit`` as a handler MONAI can attach.

Cohort adaptation promises minutes, whatever the cohort's size; ignite's ``TimeLimit`` stops an
engine after a number of seconds but is a plain callable, while MONAI's ``train_handlers``
need an ``attach``. The run then ends as a finished one (ignite fires ``COMPLETED`` after a
terminate), so the final weights are written.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import TimeLimit

__all__ = ["TrainingTimeLimit"]


class TrainingTimeLimit:
    """Stop training after ``minutes`` of this run (checked after every iteration)."""

    def __init__(self, minutes: float) -> None:
        self.limit = TimeLimit(limit_sec=max(1, int(round(float(minutes) * 60))))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.limit)
