"""Recall on the worker's side of one reply: probing the cold tier after the prompt, and putting sentences back.

While recall is on, everything a reply's directives evict moves to the session's cold tier. The forward that ends
the prompt also keeps, in every layer, the queries of the latest user message's text tokens it feeds (the probe);
the cold tier is scored against them (`Engine.recall_scores`) and the RecallProbe goes to the tracker, whose Recalled
answer names the sentences that come back and what the pruning after it evicts. Those entries are re-inserted at
their slots, and the prompt's last token is fed once more so that the first sampled token already attends to them.

Pruned entries the cold tier no longer holds (a worker that took the session over, a corrupt or missing chunk) are
recomputed from the dictionary's ids, within the cold budget; anything that still goes wrong falls back to a rebuild
of the context the tracker now holds, with the reason logged. A reply never fails because of recall.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from haloweave.tracker.v1 import tracker_pb2

from services.inference.engine import Engine, SessionCache, StepOutput
from services.inference.engine_thread import EngineThread

if TYPE_CHECKING:
    from services.inference.conversation import Conversation

log = logging.getLogger(__name__)


class Recall:
    def __init__(self, engine: Engine, cold_budget_bytes: int) -> None:
        self.engine = engine
        self.enabled = False
        self.probed = False
        self.cold_budget_bytes = cold_budget_bytes
        self.pruned: dict[int, int] = {}  # position -> token id of every deleted entry, from Opened
        self.probe_positions: frozenset[int] = frozenset()  # the latest user message's text, from Opened

    def opened(
        self, cache: SessionCache, pruned_positions: list[int], pruned_ids: list[int], probe_positions: list[int]
    ) -> None:
        """Takes the Open's deleted entries (what the cold tier may hold) and the positions whose queries probe."""
        if not self.enabled:
            cache.cold.clear()  # recall was turned off: what was kept for it is let go
            return
        self.pruned = dict(zip(pruned_positions, pruned_ids, strict=True))
        self.probe_positions = frozenset(probe_positions)
        held = set(cache.positions)
        stale = [p for p in cache.cold.held() if p not in self.pruned or p in held]
        if stale:  # the dictionary changed under the cold tier (a restore): those entries describe nothing now
            cache.cold.take(set(stale))

    def probe(self, cache: SessionCache, positions: list[int]) -> tuple[int, ...]:
        """The indices among a prompt's last chunk (`positions`) whose queries probe; () for no probe. Queries of
        the message's text only: the template's markers attend to earlier markers, which says nothing of content.
        When the text lies wholly in earlier chunks, the chunk's last token probes."""
        if not self.enabled or self.probed or not (self.pruned or len(cache.cold)):
            return ()
        chosen = tuple(i for i, p in enumerate(positions) if p in self.probe_positions)
        return chosen or (len(positions) - 1,)

    async def exchange(self, conversation: Conversation, out: StepOutput, thread: EngineThread) -> bool:
        """Probes and applies the answer; True when something came back (the prompt's last token is then pending
        again). Errors of the tracker's stream propagate: the reply cannot go on without it anyway."""
        cache = conversation.cache
        try:
            scored = await thread.run(self.score, cache, out, conversation.mode)
        except Exception:
            log.exception("%r: recall probe failed; the reply goes on without recall", conversation)
            return False
        if scored is None:
            return False
        answer = await conversation.peer.recall(scored)
        if not answer.positions and not answer.evict_positions:
            return False
        ids, positions, rebuilt = await thread.run(self.apply, cache, answer)
        conversation.refeed(ids, positions)
        conversation.stats.rebuilt |= rebuilt
        return bool(answer.positions)

    def score(self, cache: SessionCache, out: StepOutput, mode: str) -> tracker_pb2.RecallProbe | None:
        """The probe of the forward `out` (which asked for one), or None when there is nothing cold to score."""
        assert out.probe is not None
        self.probed = True
        self._recompute_missing(cache)
        scored = self.engine.recall_scores(cache, out.probe, mode)
        if scored is None:
            return None
        hot, positions, cold = scored
        return tracker_pb2.RecallProbe(cold_positions=positions, cold_scores=cold.tolist(), active_scores=hot.tolist())

    def _recompute_missing(self, cache: SessionCache) -> None:
        """Deleted entries the cold tier neither holds nor let go under its budget: recomputed, newest first, as
        far as the budget goes (the rest are marked dropped so no later turn tries again)."""
        held = cache.cold.held()
        missing = sorted(p for p in self.pruned if p not in held and p not in cache.cold.dropped)
        if not missing:
            return
        room = max(0, self.cold_budget_bytes - cache.cold.nbytes) // self.engine.kv_bytes_per_token
        split = len(missing) - min(room, len(missing))
        chosen, skipped = missing[split:], missing[:split]
        cache.cold.dropped.update(skipped)
        if chosen:
            log.info("recomputing %d pruned entries the cold tier does not hold", len(chosen))
            cache.cold.add(self.engine.recompute(cache, chosen, [self.pruned[p] for p in chosen]))

    def apply(self, cache: SessionCache, answer: tracker_pb2.Recalled) -> tuple[list[int], list[int], bool]:
        """Applies the tracker's answer; returns (ids, positions) to feed next and whether that is a rebuild."""
        before = list(zip(cache.positions, cache.token_ids, strict=True))
        last_id, last_position = cache.token_ids[-1], cache.positions[-1]
        try:
            cache.truncate(len(cache) - 1)
            self.engine.evict(cache, list(answer.evict_positions), cold=True)
            self._reinsert(cache, list(answer.positions), list(answer.token_ids))
        except Exception as error:
            # The tracker's context is known: the survivors of before, less what it evicted, plus what came back.
            log.warning("recall could not re-insert (%s); rebuilding the context", error)
            gone = set(answer.evict_positions)
            context = {p: t for p, t in before if p not in gone}
            context.update(zip(answer.positions, answer.token_ids, strict=True))
            order = sorted(context)
            cache.clear()
            return [context[p] for p in order], order, True
        return [last_id], [last_position], False

    def _reinsert(self, cache: SessionCache, positions: list[int], token_ids: list[int]) -> None:
        held = set(cache.positions)
        wanted = {p: t for p, t in zip(positions, token_ids, strict=True) if p not in held}
        if len(wanted) < len(positions):
            log.warning("recall: %d positions are in the cache already; skipped", len(positions) - len(wanted))
        chunk = cache.cold.take(set(wanted))
        if chunk is not None:
            if any(wanted[p] != t for p, t in zip(chunk.positions, chunk.token_ids, strict=True)):
                log.warning("recall: cold entries disagree with the dictionary's ids; recomputing them")
                chunk = None
            else:
                self.engine.reinsert(cache, chunk)
        have = set(chunk.positions) if chunk is not None else set()
        missing = sorted(p for p in wanted if p not in have)
        if missing:
            log.info("recall: recomputing %d entries the cold tier does not hold", len(missing))
            self.engine.reinsert(cache, self.engine.recompute(cache, missing, [wanted[p] for p in missing]))
