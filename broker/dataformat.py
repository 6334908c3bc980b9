"""The data directory's format marker: which on-disk format the data is in, and who wrote it.

``<data directory>/format.json`` holds ``{"format": N, "brokerVersion": "..."}``. A
broker writes it at start when it is absent (data from before the marker is format 1)
and raises it when it is older; it refuses to start on data of a newer format, which
it may misread. ``broker check-data`` asks the same question without touching
anything, so that an upgrade can ask the release it is about to run, before stopping
the running broker, whether that release can run the data (a rollback across a
format change is refused there, with the same message).

The per-file versions (journal segments, snapshots) stay: they guard each file; this
marker guards the directory as a whole and names the version to install.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from broker import __version__
from broker.fsutil import StorageError, atomic_write

# The on-disk format this build writes and reads. Raise it with any change older
# brokers cannot read; a broker refuses data whose format is above its own.
DATA_FORMAT = 1
FORMAT_FILE = "format.json"
# Data written before the marker existed is the first format.
UNMARKED_FORMAT = 1


class NewerDataError(StorageError):
    """The data directory holds a format this build does not read."""

    def __init__(self, directory: str, data_format: int, written_by: str):
        self.data_format = data_format
        self.written_by = written_by
        super().__init__(
            directory,
            f"data format {data_format} (written by broker {written_by}) is newer than "
            f"this broker {__version__} (format {DATA_FORMAT}) reads",
        )
        self.message = (
            f"broker: cannot run the data in {directory}: it is in format {data_format}, "
            f"written by broker {written_by}, and this broker {__version__} reads format "
            f"{DATA_FORMAT} at most; install broker {written_by} or newer to run it (a "
            f"downgrade across a data format change is not possible: to go back to "
            f"{__version__}, restore a backup taken by broker {__version__} instead)"
        )

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Marker:
    """What the directory holds: ``format`` None when there is no data at all."""

    directory: str
    format: int | None
    written_by: str | None
    marked: bool  # format.json exists


def read(directory: str) -> Marker:
    """The marker of ``directory``; never writes. A corrupt marker is a StorageError."""
    path = os.path.join(directory, FORMAT_FILE)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        fmt, version = doc["format"], doc.get("brokerVersion")
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise ValueError(f"format {fmt!r}")
    except FileNotFoundError:
        has_data = os.path.isdir(directory) and any(
            e.name != FORMAT_FILE for e in os.scandir(directory)
        )
        return Marker(directory, UNMARKED_FORMAT if has_data else None, None, False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageError(
            path,
            f"unreadable data format marker ({exc})",
            'restore it as {"format": N, "brokerVersion": "..."} or restore a backup',
        ) from None
    return Marker(directory, fmt, str(version or "unknown"), True)


def check(directory: str) -> Marker:
    """The marker, or NewerDataError when this build cannot run the data."""
    marker = read(directory)
    if marker.format is not None and marker.format > DATA_FORMAT:
        raise NewerDataError(directory, marker.format, marker.written_by or "unknown")
    return marker


def ensure(directory: str) -> Marker:
    """At start, the directory existing: refuse newer data, else write the marker when it
    is absent or older (atomically, fsynced), so that an older broker refuses it later."""
    marker = check(directory)
    if marker.marked and marker.format == DATA_FORMAT:
        return marker
    doc = {"format": DATA_FORMAT, "brokerVersion": __version__}
    atomic_write(os.path.join(directory, FORMAT_FILE), json.dumps(doc).encode() + b"\n")
    return Marker(directory, DATA_FORMAT, __version__, True)
