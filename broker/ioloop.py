"""One thread that serves many non-blocking sockets through a selector.

A thread per connection (a reader, a writer) made a broker's thread count grow
with its clients and peers, and handed every frame across threads twice. Here
one thread waits on all the sockets it was given and calls their handler when
one can be read or written; other threads queue output with ``want_write``
and close with ``remove``, and the loop does the socket calls itself, so no
socket (and no OpenSSL object) is ever used by two threads at once.

The loop knows nothing of the protocol: a handler (``Channel``) reads, writes
and closes its own socket. ``readable``, ``writable`` and ``tick`` run on the
loop's thread and must not block: they use the socket non-blocking.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("broker.ioloop")

TICK_INTERVAL = 0.5  # how often every channel's tick() runs (its timeouts)


class Channel(Protocol):
    sock: socket.socket

    def readable(self) -> None:
        """Read what arrived (the socket is non-blocking)."""

    def writable(self) -> bool:
        """Write what is queued; True while output is left for later."""

    def tick(self, now: float) -> None:
        """Periodic: enforce the channel's timeouts (``now`` is time.monotonic())."""

    def released(self) -> None:
        """The loop dropped the channel: close the socket (idempotent: a remove that
        races a stopping loop may release it twice)."""


class IoLoop:
    def __init__(self, name: str):
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()  # the three requests below, and _woken
        self._adds: list[Channel] = []
        self._writes: set[Channel] = set()
        self._removes: set[Channel] = set()
        self._woken = False
        self._stopping = False
        self._channels: dict[Channel, int] = {}  # registered -> the events asked for
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # heap, under _lock
        self._timer_seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- from any thread --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Release every channel and end the thread."""
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def add(self, channel: Channel) -> None:
        """Serve ``channel`` from now on; the loop reads it once at once (a buffer may
        already hold data, e.g. decrypted TLS records the selector cannot see). A loop
        that has stopped releases it at once."""
        if not self._request("add", channel):
            channel.released()

    def want_write(self, channel: Channel) -> None:
        """``channel`` has output queued: the loop writes it."""
        self._request("write", channel)

    def remove(self, channel: Channel) -> None:
        """Stop serving ``channel``; the loop calls its ``released()`` (a stopping loop
        releases all it has; one that never ran or has ended, this thread does)."""
        if not self._request("remove", channel) and not self._thread.is_alive():
            channel.released()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread in ``delay`` seconds (it must not block);
        dropped if the loop stops first."""
        when = time.monotonic() + delay
        with self._lock:
            if self._stopping:
                return
            earliest = not self._timers or when < self._timers[0][0]
            heapq.heappush(self._timers, (when, next(self._timer_seq), fn))
            wake = earliest and not self._woken
            if wake:
                self._woken = True
        if wake:
            self._wake()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _request(self, kind: str, channel: Channel) -> bool:
        """Queue a request for the loop and wake it; False if it has stopped."""
        with self._lock:
            if self._stopping:
                return False
            # The containers are looked up under the lock: the loop swaps them for
            # new ones when it takes them, and an item put into one already taken
            # would be lost (a connection whose answers are never written).
            if kind == "add":
                self._adds.append(channel)
            elif kind == "write":
                self._writes.add(channel)
            else:
                self._removes.add(channel)
            wake, self._woken = not self._woken, True
        if wake:
            self._wake()
        return True

    def _wake(self) -> None:
        # BlockingIOError: wake-ups are pending already; OSError: the loop is gone
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # --- the loop's thread ------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + TICK_INTERVAL
        try:
            while True:
                timeout = max(0.0, min(next_tick, self._next_timer()) - time.monotonic())
                try:
                    events = self._selector.select(timeout)
                except OSError as e:  # a socket closed under the selector: find it
                    log.warning("%s: select failed: %s", self.name, e)
                    self._drop_dead_sockets()
                    events = []
                for key, mask in events:
                    channel = key.data
                    if channel is None:
                        self._drain_wake()
                        continue
                    if channel not in self._channels:
                        continue  # released earlier in this round
                    if mask & selectors.EVENT_READ:
                        self._call(channel, channel.readable)
                    if mask & selectors.EVENT_WRITE and channel in self._channels:
                        self._write(channel)
                if self._take_requests():
                    return
                self._run_timers()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_INTERVAL
                    for channel in list(self._channels):
                        self._call(channel, lambda c=channel, t=now: c.tick(t))
        finally:
            for channel in list(self._channels):
                self._release(channel)
            with self._lock:
                self._stopping = True
                adds, self._adds = self._adds, []
            for channel in adds:
                channel.released()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _next_timer(self) -> float:
        with self._lock:
            return self._timers[0][0] if self._timers else float("inf")

    def _run_timers(self) -> None:
        now, due = time.monotonic(), []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for fn in due:
            try:
                fn()
            except Exception:
                log.exception("%s: timer %r failed", self.name, fn)

    def _drop_dead_sockets(self) -> None:
        for channel in list(self._channels):
            if channel.sock.fileno() < 0:
                self._release(channel)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _take_requests(self) -> bool:
        """Carry out what other threads asked; True when the loop must end."""
        with self._lock:
            adds, self._adds = self._adds, []
            writes, self._writes = self._writes, set()
            removes, self._removes = self._removes, set()
            self._woken = False
            stopping = self._stopping
        for channel in adds:
            try:
                self._selector.register(channel.sock, selectors.EVENT_READ, channel)
            except (OSError, ValueError) as e:  # closed meanwhile
                log.debug("%s: cannot serve %r: %s", self.name, channel, e)
                channel.released()
                continue
            self._channels[channel] = selectors.EVENT_READ
            self._call(channel, channel.readable)
            if channel in self._channels:
                writes.add(channel)  # output queued before it was served
        for channel in removes:
            if channel in self._channels:
                self._release(channel)
            else:
                channel.released()
        for channel in writes:
            if channel in self._channels:
                self._write(channel)
        return stopping

    def _write(self, channel: Channel) -> None:
        more = self._call(channel, channel.writable)
        if channel not in self._channels:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if more else 0)
        if self._channels[channel] != events:
            self._channels[channel] = events
            try:
                self._selector.modify(channel.sock, events, channel)
            except (OSError, ValueError, KeyError) as e:  # its socket was closed under it
                log.warning("%s: %r lost its socket: %s", self.name, channel, e)
                self._release(channel)

    def _call(self, channel: Channel, fn):
        """Run a handler; one that raises loses its channel, never the loop."""
        try:
            return fn()
        except Exception:
            log.exception("%s: %r failed; closing it", self.name, channel)
            self._release(channel)
            return False

    def _release(self, channel: Channel) -> None:
        if self._channels.pop(channel, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(channel.sock)
        try:
            channel.released()
        except Exception:
            log.exception("%s: releasing %r failed", self.name, channel)
