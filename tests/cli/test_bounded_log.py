"""The service's log stops growing at its limit and says so, once."""

import io

from pyflank.cli.bounded_log import BoundedStream


def test_writes_past_the_limit_are_dropped_with_one_notice() -> None:
    target = io.StringIO()
    log = BoundedStream(target, limit=100)
    for _ in range(1000):
        log.write("a line of the log, 30 chars.\n")
    text = target.getvalue()
    assert text.count("log limit of 100 characters reached") == 1
    assert len(text) < 100 + 100
    assert log.dropped == 1000 - 3
