"""Per-thread batches handed over once per turn.

A thread that handles many requests in one turn (a connection's reader
decoding a buffer of frames, a partition thread answering a batch of
commits) would otherwise cross to another thread once per request: a lock,
a queue entry and a wake-up each. Inside ``with batches.turn():`` the
thread's ``add(target, item)`` calls are gathered per target instead, and
each target receives its list with one ``target.take(items)`` when the turn
ends, in the order added. Outside a turn ``add`` returns False and the
caller hands the item over at once, so code that is not driven in turns
(tests, tools) behaves as before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Taker(Protocol):
    def take(self, items: list) -> None: ...


class Batches:
    def __init__(self, name: str):
        self.name = name
        self._local = threading.local()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Gather this thread's items until the block ends (a nested turn joins the
        outer one)."""
        local = self._local
        if getattr(local, "pending", None) is not None:
            yield
            return
        local.pending = {}
        try:
            yield
        finally:
            pending, local.pending = local.pending, None
            for target, items in pending.items():
                try:
                    target.take(items)
                except Exception:  # one target's bug must not lose the others' items
                    log.exception("%s: %d items for %r lost", self.name, len(items), target)

    def add(self, target: Taker, item: Any) -> bool:
        """Gather ``item`` for ``target``; False outside a turn (hand it over now)."""
        pending = getattr(self._local, "pending", None)
        if pending is None:
            return False
        items = pending.get(target)
        if items is None:
            pending[target] = [item]
        else:
            items.append(item)
        return True


SENDS = Batches("sends")  # encoded frames for a connection's writer
PROPOSALS = Batches("proposals")  # commands for a partition thread's inbox


@contextlib.contextmanager
def turn() -> Iterator[None]:
    """One turn of both kinds: what a reader or a partition thread does per wake-up."""
    with SENDS.turn(), PROPOSALS.turn():
        yield
