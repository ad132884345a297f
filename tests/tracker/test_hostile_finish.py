"""Non-finite timings of a reply (found by tests/fuzz) once went into its `done` event as NaN and Infinity, which no
browser parses."""

from __future__ import annotations

import json
import math

from haloweave.tracker.v1 import tracker_pb2 as pb

from services.tracker import convert


def test_non_finite_timings_of_a_reply_are_reported_as_unknown() -> None:
    finish = pb.Finish(reason="eos", tokens=3, time_to_first_token_s=math.nan, tokens_per_s=math.inf)
    stats = convert.finish_stats_from_pb(finish)
    assert stats == {"tokens": 3, "time_to_first_token_s": None, "tokens_per_s": None}
    json.dumps(stats, allow_nan=False)  # what a browser's JSON.parse accepts
    assert convert.finish_stats_from_pb(pb.Finish(time_to_first_token_s=0.5, tokens_per_s=20.0))["tokens_per_s"] == 20
