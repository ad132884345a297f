"""Protobuf in, domain objects out, and back: the only place that knows both (to_pb / from_pb)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from haloweave.tracker.v1 import tracker_pb2 as pb

from services.common import settings_wire
from services.tracker.engine import ContextView, Opened, RecallOutcome, RecallProbe, StepOutcome
from services.tracker.frames import FrameInput
from services.tracker.restore import ExportedToken
from services.tracker.settings import Settings
from services.tracker.state import SessionState


def settings_changes_from_pb(message: pb.Settings) -> dict[str, Any]:
    """Only the settings that are set (an update, or the overrides of a new session), each checked against the
    schema; the merged result is validated where it is applied (`Settings.updated`)."""
    return settings_wire.from_pb(message)


def settings_to_pb(settings: Settings) -> pb.Settings:
    return settings_wire.effective_to_pb(settings)


def context_to_pb(session_id: str, context: ContextView) -> pb.Context:
    return pb.Context(
        session_id=session_id,
        positions=context.positions,
        token_ids=context.token_ids,
        next_position=context.next_position,
    )


def session_info_to_pb(state: SessionState) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=state.session_id,
        settings=settings_to_pb(state.settings),
        model=state.meta.model,
        tokenizer_fingerprint=state.meta.fingerprint,
        active_tokens=state.active_count(),
        pruned_tokens=state.meta.pruned_tokens,
        turns=state.meta.turns,
        generating=state.generating,
    )


def frame_from_pb(message: pb.Frame) -> FrameInput:
    return FrameInput(
        step=message.step,
        token_id=message.token_id,
        attention=np.array(message.attention, dtype=np.float32),
        full=message.full_attention,
        layers=message.layers,
        heads=message.heads,
    )


def finish_stats_from_pb(message: pb.Finish) -> dict[str, Any]:
    """The worker's measurements of a reply, for its `done` event. One that is not a finite number (a clock gone
    wrong) is reported as null, unknown: NaN and Infinity are not JSON, and every client parses the event."""
    stats: dict[str, Any] = {"tokens": message.tokens}
    for name in ("time_to_first_token_s", "tokens_per_s"):
        value = getattr(message, name)
        stats[name] = value if math.isfinite(value) else None
    return stats


def opened_to_pb(session_id: str, opened: Opened) -> pb.GenerateResponse:
    message = pb.Opened(
        turn_id=opened.turn_id,
        settings=settings_to_pb(opened.settings),
        context=context_to_pb(session_id, opened.context),
        resumed_step=opened.resumed_step,
    )
    if opened.pruned is not None:
        message.pruned.CopyFrom(context_to_pb(session_id, opened.pruned))
    if opened.probe_positions is not None:
        message.probe_positions.extend(opened.probe_positions)
    return pb.GenerateResponse(opened=message)


def probe_from_pb(message: pb.RecallProbe) -> RecallProbe:
    return RecallProbe(
        cold_positions=np.array(message.cold_positions, dtype=np.int64),
        cold_scores=np.array(message.cold_scores, dtype=np.float64),
        active_scores=np.array(message.active_scores, dtype=np.float64),
    )


def recalled_to_pb(outcome: RecallOutcome) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        recalled=pb.Recalled(
            positions=outcome.positions, token_ids=outcome.token_ids, evict_positions=outcome.evict_positions
        )
    )


def directive_to_pb(session_id: str, outcome: StepOutcome, include_settings: bool) -> pb.GenerateResponse:
    directive = pb.Directive(
        step=outcome.step,
        position=outcome.position,
        evict_positions=outcome.evict_positions,
        reprefill=outcome.reprefill,
        cancel=outcome.cancel,
    )
    if outcome.context is not None:
        directive.context.CopyFrom(context_to_pb(session_id, outcome.context))
    if include_settings:
        directive.settings.CopyFrom(settings_to_pb(outcome.settings))
    return pb.GenerateResponse(directive=directive)


def export_to_pb(state: SessionState, tokens: list[ExportedToken]) -> pb.ExportResponse:
    return pb.ExportResponse(
        session_id=state.session_id,
        settings=settings_to_pb(state.settings),
        tokens=[
            pb.TokenEntry(
                token=t.token,
                token_id=t.token_id,
                position=t.position,
                attention_score=t.attention_score,
                turn_id=t.turn_id,
                sentence_id=t.sentence_id,
                role=t.role,
                deleted=t.deleted,
            )
            for t in tokens
        ],
        model=state.meta.model,
        tokenizer_fingerprint=state.meta.fingerprint,
        next_position=state.meta.next_position,
    )


def tokens_from_pb(message: pb.ExportResponse) -> list[ExportedToken]:
    return [
        ExportedToken(
            token=t.token,
            token_id=t.token_id,
            position=t.position,
            attention_score=t.attention_score,
            turn_id=t.turn_id,
            sentence_id=t.sentence_id,
            role=t.role,
            deleted=t.deleted,
        )
        for t in message.tokens
    ]
