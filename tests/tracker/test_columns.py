"""Growing columns in place (services.tracker.columns) and the distance-weight tables: fast paths that must give the
same numbers as the plain computation and never let one draft overwrite what another state holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import events
from services.tracker import columns, scoring, store


def test_extend_appends_and_leaves_the_original_as_it_was() -> None:
    base = np.arange(3, dtype="<i8")
    grown = columns.extend(base, np.array([3], dtype="<i8"))
    for value in range(4, 200):  # through several reallocations
        grown = columns.extend(grown, np.array([value], dtype="<i8"))
    assert grown.tolist() == list(range(200))
    assert base.tolist() == [0, 1, 2]
    assert grown.base is not None and len(grown.base) > len(grown)  # spare room: later appends do not copy


def test_two_drafts_of_one_state_never_overwrite_each_other() -> None:
    state = columns.extend(np.zeros(0, dtype="<f8"), np.array([1.0, 2.0]))
    first = columns.extend(state, np.array([10.0]))  # grows in place: the room after `state`
    second = columns.extend(state, np.array([20.0]))  # the same room is taken: must be copied elsewhere
    third = columns.extend(first, np.array([11.0]))
    assert first.tolist() == [1.0, 2.0, 10.0]
    assert second.tolist() == [1.0, 2.0, 20.0]
    assert third.tolist() == [1.0, 2.0, 10.0, 11.0]
    assert state.tolist() == [1.0, 2.0]
    assert not np.shares_memory(first, second)


def test_extend_one_follows_the_same_rules_as_extend() -> None:
    state = columns.extend(np.zeros(0, dtype="<i4"), np.array([1, 2], dtype="<i4"))
    first = columns.extend_one(state, 10)
    second = columns.extend_one(state, 20)  # the room after `state` is taken by `first`: copied elsewhere
    grown = first
    for value in range(11, 200):  # through several reallocations
        grown = columns.extend_one(grown, value)
    assert grown.dtype == np.dtype("<i4")
    assert grown.tolist() == [1, 2, *range(10, 200)]
    assert second.tolist() == [1, 2, 20] and state.tolist() == [1, 2]
    assert not np.shares_memory(first, second)
    with pytest.raises(OverflowError):  # out of the column's range: refused, as np.array(..., dtype) would
        columns.extend_one(grown, 2**40)


def test_a_copy_with_room_is_independent() -> None:
    column = columns.extend(np.zeros(0, dtype="u1"), np.array([0, 1, 0], dtype="u1"))
    rewritten = columns.copy(column)
    rewritten[1] = 0
    grown = columns.extend(rewritten, np.array([1], dtype="u1"))
    assert column.tolist() == [0, 1, 0]
    assert grown.tolist() == [0, 0, 0, 1]


@settings(deadline=None)
@given(
    st.sampled_from(["none", "threshold", "linear", "square_root", "logarithmic"]),
    st.integers(0, 40),
    st.floats(0.1, 50.0),
    st.lists(st.integers(0, 20_000), min_size=1, max_size=50),
)
def test_distance_tables_equal_the_formula_bit_for_bit(mode: str, m: int, s: float, distances: list[int]) -> None:
    d = np.asarray(distances, dtype=np.int64)
    expected = scoring._weights_formula(d, mode, m, s)
    assert np.array_equal(scoring.distance_weights(d, mode, m, s), expected)


def test_an_unknown_distance_mode_is_refused_and_not_cached() -> None:
    with pytest.raises(Exception, match="unknown distance mode"):
        scoring.distance_weights(np.arange(5, dtype=np.int64), "cubic", 0, 1.0)
    assert not any(key[0] == "cubic" for key in scoring._TABLES)


def test_step_events_decode_as_the_shared_encoder_would() -> None:
    payloads = {
        "brightness": {"step": 3, "turn_id": 2, "positions": [1, 5, 900], "scores": [0.0, 1e-06, 12.345678]},
        "token": {"position": 7, "token": ' café\n\t"<|im_end|>', "token_id": 5, "role": "user", "score": 0.0},
        "pruned": {"positions": [1, 2], "turn_id": 1, "sentence_id": 0},
    }
    for event_type, data in payloads.items():
        kind, raw = store._encode_event(event_type, data)
        assert kind == event_type
        assert json.loads(raw) == json.loads(events.encode(event_type, data)[1]) == data
    lone_surrogate = {"token": "\ud800"}  # not encodable as UTF-8: falls back to the shared (escaping) encoder
    assert store._encode_event("token", lone_surrogate) == events.encode("token", lone_surrogate)
