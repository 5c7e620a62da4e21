"""Points of a training schedule, relative to the run's length.

A schedule value (when densification starts, how often it repeats, over how many steps t_max is annealed …) is
either an absolute step (an int) or a fraction of the run (a float in [0, 1]), placed by `at_step`. Presets use
fractions, so that `--iterations 1000` stretches every schedule as the learning-rate decay already stretches; ints
keep their meaning (run folders written before fractions, gsplat-style absolute settings).
"""

from __future__ import annotations

StepOrFraction = int | float  # an absolute step (int) or a fraction of the run (float)


def at_step(value: StepOrFraction, max_steps: int | None) -> int:
    """The step `value` stands for in a run of `max_steps` steps: an int as it is, a float × max_steps rounded
    (0.5 of a 160-step run is step 80). ValueError for a fraction without a run length."""
    if isinstance(value, int):
        return value
    if max_steps is None:
        raise ValueError(f"the schedule value {value} is a fraction of the run; pass max_steps")
    return int(round(value * max_steps))


def check_step_or_fraction(value, name: str) -> None:
    """ValueError (one line) unless `value` is a step ≥ 0 (int) or a fraction of the run in [0, 1] (float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 \
            or (isinstance(value, float) and value > 1):
        raise ValueError(f"{name} must be a step ≥ 0 (an int) or a fraction of the run in [0, 1] (a float), "
                         f"got {value!r}")
