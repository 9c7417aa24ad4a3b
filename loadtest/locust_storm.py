"""The storm shape for locust: ramp, hold, mass reconnect, hold, ramp down.

Use it beside the user::

    locust -f loadtest/locustfile.py,loadtest/locust_storm.py --headless \
        -u 5000 -r 500 --scorecast-hold 30 --scorecast-hold-after 30 \
        --host ws://127.0.0.1:8080

``-u`` users are started at ``-r`` per second; ``--scorecast-hold`` seconds
after the ramp every user drops its link at the same moment (a message to
every locust process) and comes back with ``since`` within
``--scorecast-reconnect-jitter`` seconds; ``--scorecast-hold-after`` seconds
later users stop at ``--scorecast-ramp-down`` per second and the run ends.
Kept out of ``locustfile.py`` because locust applies any shape it finds,
which would override plain ``-u/-r/-t`` runs.
"""

from __future__ import annotations

from locust import LoadTestShape

__all__ = ["StormShape"]

RECONNECT_MESSAGE = "scorecast_reconnect"  # the same as loadtest.locustfile's


class StormShape(LoadTestShape):
    use_common_options = True  # -u and -r come from locust's own options

    def __init__(self) -> None:
        super().__init__()
        self.reconnected = False
        self.ended_at: float | None = None

    def tick(self) -> tuple[int, float] | None:
        runner = self.runner
        assert runner is not None  # locust hands the shape its runner before the first tick
        options = runner.environment.parsed_options
        assert options is not None  # a locust run always has its parsed command line
        users, rate = options.num_users or 1, options.spawn_rate or 1.0
        ramp = users / rate
        hold_until = ramp + options.scorecast_hold
        end = hold_until + options.scorecast_hold_after
        now = self.get_run_time()
        if now < hold_until:
            return users, rate
        if not self.reconnected:
            self.reconnected = True
            runner.send_message(RECONNECT_MESSAGE, {"at": now})
        if now < end:
            return users, rate
        if self.get_current_user_count() > 0:
            return 0, options.scorecast_ramp_down or rate
        if self.ended_at is None:
            self.ended_at = now
        return None if now - self.ended_at > 1.0 else (0, rate)
