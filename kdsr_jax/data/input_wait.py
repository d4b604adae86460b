"""How long training waits for its input: `InputWaitMeter` wraps the batch iterator.

The training loop dispatches each step asynchronously, then takes the next batch while
the device works. Per logging interval, `scalars()` returns

* ``perf/input_wait_s``: mean seconds per step spent inside `next(iterator)`;
* ``perf/input_wait_fraction``: that wait over the mean wall time per step.

While the device is the bottleneck the wait overlaps its work and the fraction stays
below 1 (about input time / device step time); when the input pipeline is the
bottleneck the device idles and the fraction approaches 1. Above `warn_fraction`
(after the first interval, which includes compilation and the pipeline's start-up),
ONE warning names the remedy: prepare the data once (`scripts/prepare_data.py`,
`data.source='prepared'`) or add input workers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)

# Fraction of step time spent waiting for input above which the input is the bottleneck.
WARN_FRACTION = 0.8
REMEDY = ("decode the images once with `python scripts/prepare_data.py --input FOLDER "
          "--output DIR` and train with --config.data.source=prepared "
          "--config.data.path=DIR, or raise data.worker_threads / data.worker_processes")


class InputWaitMeter:
    """Iterator wrapper that times each `next()` (host seconds, `time.perf_counter`)."""

    def __init__(self, iterator: Iterator, *, warn_fraction: float = WARN_FRACTION,
                 clock: Callable[[], float] = time.perf_counter):
        self._iterator = iterator
        self.warn_fraction = float(warn_fraction)
        self._clock = clock
        self._interval_start = clock()
        self._wait = 0.0
        self._steps = 0
        self._intervals = 0
        self.warned = False

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        t0 = self._clock()
        try:
            return next(self._iterator)
        finally:
            self._wait += self._clock() - t0
            self._steps += 1

    def scalars(self) -> dict[str, float]:
        """{'perf/input_wait_s', 'perf/input_wait_fraction'} since the previous call
        (empty if no step was taken); warns once if the input is the bottleneck."""
        now = self._clock()
        elapsed, wait, steps = now - self._interval_start, self._wait, self._steps
        self._interval_start, self._wait, self._steps = now, 0.0, 0
        if steps == 0:
            return {}
        self._intervals += 1
        fraction = wait / elapsed if elapsed > 0 else 0.0
        if self._intervals > 1 and fraction > self.warn_fraction and not self.warned:
            self.warned = True
            logger.warning("training waited for input %.0f%% of the step time (%.3f s per "
                           "step): the input pipeline is the bottleneck; %s",
                           100 * fraction, wait / steps, REMEDY)
        return {"perf/input_wait_s": wait / steps, "perf/input_wait_fraction": fraction}
