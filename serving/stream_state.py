"""Bounded per-entity streaming state: what one entity's next call needs, and the store.

:class:`EntityState` holds nothing that grows with an entity's history (the recurrent state
or the last ``window_len`` encoded events, the last event's time and seq). :class:`StateStore`
bounds how many a replica keeps, by a time-to-live and least-recently-used eviction, and
remembers why recent entities lost theirs, so that ``serving.streaming`` answers such a call
as a reset with its reason, never as a new entity or as if the state were there.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from seqmodels.stepping import NumpyState


@dataclasses.dataclass
class EntityState:
    """What one entity's next call needs; nothing here grows with its history."""

    model_version: str
    events_seen: int
    last_time_us: int
    last_seq: int | None
    recurrent: NumpyState | None = None
    """LSTM (h, c) or GRU h, each (num_layers, H) float32 (``seqmodels.stepping``)."""
    step_sum: np.ndarray | None = None
    """(H,) float64 sum of the encoder's step outputs so far (RNN with mean pooling)."""
    window_cat: np.ndarray | None = None
    """(W, C) last encoded events (transformer)."""
    window_num: np.ndarray | None = None
    window_time_us: np.ndarray | None = None
    last_output: np.ndarray | None = None
    touched: float = 0.0


class StateStore:
    """Per-entity state with a time-to-live and least-recently-used eviction.

    Remembers (bounded, newest first) why recent entities lost their state, so that a call
    after an eviction is answered as a reset with its reason rather than as a new entity.
    Thread-safe: a replica may score on worker threads.
    """

    def __init__(
        self, max_entities: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entities, self.ttl_s, self.clock = max_entities, ttl_s, clock
        self._states: OrderedDict[str, EntityState] = OrderedDict()  # least recent first
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = {"lru": 0, "ttl": 0}

    def __len__(self) -> int:
        return len(self._states)

    def _forget(self, entity: str, reason: str) -> None:
        self._gone[entity] = reason
        self._gone.move_to_end(entity)
        while len(self._gone) > 4 * self.max_entities:
            self._gone.popitem(last=False)

    def get(self, entity: str) -> tuple[EntityState | None, str | None]:
        """(state, None) or (None, why it is gone: ``ttl_expired``/``lru_evicted``/None)."""
        with self._lock:
            state = self._states.get(entity)
            if state is not None and self.clock() - state.touched > self.ttl_s:
                del self._states[entity]
                self.evicted["ttl"] += 1
                self._forget(entity, "ttl_expired")
                state = None
            if state is None:
                return None, self._gone.get(entity)
            return state, None

    def put(self, entity: str, state: EntityState, expected: int | None = None) -> bool:
        """Keep ``state`` if the entity still holds ``expected`` events (None: no state), as
        the shared store does (``serving.redis_state``); False when another call wrote first."""
        with self._lock:
            held = self._states.get(entity)
            if (held.events_seen if held is not None else None) != expected:
                return False
            state.touched = self.clock()
            self._states[entity] = state
            self._states.move_to_end(entity)
            self._gone.pop(entity, None)
            while len(self._states) > self.max_entities:
                old, _ = self._states.popitem(last=False)
                self.evicted["lru"] += 1
                self._forget(old, "lru_evicted")
            return True

    def on_model_change(self) -> None:
        """Kept states belong to the old version: drop them (answered as ``model_changed``)."""
        self.clear("model_changed")

    def drop(self, entity: str, reason: str) -> None:
        with self._lock:
            if self._states.pop(entity, None) is not None:
                self._forget(entity, reason)

    def sweep(self) -> int:
        """Drop every expired state now (a replica calls this periodically); returns how many."""
        with self._lock:
            now, expired = self.clock(), []
            for entity, state in self._states.items():  # least recently touched first
                if now - state.touched <= self.ttl_s:
                    break
                expired.append(entity)
            for entity in expired:
                del self._states[entity]
                self.evicted["ttl"] += 1
                self._forget(entity, "ttl_expired")
            return len(expired)

    def clear(self, reason: str) -> None:
        with self._lock:
            for entity in list(self._states):
                self._forget(entity, reason)
            self._states.clear()

    def resize(self, max_entities: int, ttl_s: float) -> None:
        with self._lock:
            self.max_entities, self.ttl_s = max_entities, ttl_s
            while len(self._states) > self.max_entities:
                old, _ = self._states.popitem(last=False)
                self.evicted["lru"] += 1
                self._forget(old, "lru_evicted")
