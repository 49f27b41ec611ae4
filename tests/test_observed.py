"""What the controller learns of its workers from their heartbeat records (daas.observed), with
made-up clocks: no AWS."""
from __future__ import annotations

import math
import time

from daas import config
from daas.fleet import Worker
from daas.observed import Observed


def test_a_boot_is_measured_to_the_middle_of_the_heartbeat_s_whole_second_and_kept(tmp_path):
    """S3 lists a heartbeat's LastModified in whole seconds: a beat listed at 12.0 was sent between
    12.0 and 13.0, so a worker launched at 10.25 booted in 2.25 s on average, not 1.75."""
    seen = Observed(config.Settings(state_dir=tmp_path))
    t0 = math.floor(time.time()) + 10.0  # launched after the controller started watching
    booting, served, gone = Worker("a", t0 + 0.25), Worker("b", t0), Worker("c", t0)

    view = seen.view([booting, served, gone], {"b": t0 + 2.0, "c": t0 + 1.0}, now=t0 + 2.5, stale_after=30)
    assert (view.ready, view.retiring) == (2, 0) and view.starting == (2.25,)
    assert seen.boots == [2.5, 1.5]

    # "a" beats (listed at 12.0: sent from 12.0 to 13.0); "c"'s record went away: it is retiring
    view = seen.view([booting, served, gone], {"a": t0 + 2.0, "b": t0 + 3.0}, now=t0 + 3.5, stale_after=30)
    assert (view.ready, view.starting, view.retiring) == (2, (), 1)
    assert seen.boots == [2.5, 1.5, 2.25] and seen.boot == 2.25
    assert Observed(config.Settings(state_dir=tmp_path)).boots == [2.5, 1.5, 2.25]  # a restart keeps them
