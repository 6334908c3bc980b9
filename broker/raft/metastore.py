"""The Raft hard state (term, vote, forced configuration) in one atomically replaced file.

It must be durable before the node acts on it (sends a vote, a message at a new
term), so ``save`` returns only after the file and its directory are fsynced.
A damaged file is an error, never a silent reset: forgetting a vote could let
this node vote twice in one term.
"""

from __future__ import annotations

import os

import msgpack

from broker.fsutil import (
    CorruptFileError,
    make_private_dirs,
    read_checked,
    remove_temp_files,
    write_checked,
)
from broker.raft.messages import Configuration, HardState

_FILE = "meta"


class MetaStore:
    def __init__(self, directory: str | os.PathLike):
        make_private_dirs(directory)
        self.path = os.path.join(os.fspath(directory), _FILE)
        remove_temp_files(directory, _FILE + ".")

    def load(self) -> HardState:
        """The last saved hard state, or the initial one if none was ever saved."""
        try:
            payload = read_checked(self.path)
        except FileNotFoundError:
            return HardState()
        try:
            doc = msgpack.unpackb(payload)
            forced = doc["forced"]
            return HardState(
                term=_int(doc["term"]),
                vote=None if doc["vote"] is None else _int(doc["vote"]),
                forced=None if forced is None else Configuration.decode(forced),
                forced_term=_int(doc["forced_term"]),
            )
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
            raise CorruptFileError(self.path, f"undecodable hard state: {e!r}") from e

    def save(self, hs: HardState) -> None:
        doc = {
            "term": hs.term,
            "vote": hs.vote,
            "forced": None if hs.forced is None else hs.forced.encode(),
            "forced_term": hs.forced_term,
        }
        write_checked(self.path, msgpack.packb(doc))


def _int(value) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an int, got {value!r}")
    return value
