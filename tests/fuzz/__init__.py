"""Property tests (Hypothesis) of the code that reads bytes and bodies from the
network: the frame decoder, the Raft message decoder, the gateway's request
validation.

Two settings profiles: ``ci`` (the default: ~200 examples a test, derandomized
so that a run is reproducible, no deadline) and ``fuzz`` (20,000 examples, a
random seed each run), chosen with ``HYPOTHESIS_PROFILE=fuzz``::

    HYPOTHESIS_PROFILE=fuzz .venv/bin/python -m pytest -q tests/fuzz

The tests here apply the chosen profile themselves (``@FUZZ``) rather than
loading it for the whole session, so running them beside other tests changes
nothing for those.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, suppress_health_check=_QUIET
)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, derandomize=False, suppress_health_check=_QUIET
)

PROFILE = "fuzz" if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else "ci"
FUZZ = settings.get_profile(PROFILE)


# --- shared strategies ---------------------------------------------------------

from hypothesis import strategies as st  # noqa: E402

from broker.raft.messages import (  # noqa: E402
    MAX_INDEX,
    MAX_NODE_ID,
    MAX_PARTITION_ID,
    MAX_PRIORITY,
    MAX_TERM,
    AppendRequest,
    AppendResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

# Numbers near the edges of every range are where codecs break.
EDGES = [0, 1, -1, 2**31 - 1, 2**31, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]


def ints(hi: int, lo: int = 0) -> st.SearchStrategy[int]:
    return st.integers(lo, hi) | st.sampled_from([lo, hi, min(lo + 1, hi), max(hi - 1, lo)])


terms = ints(MAX_TERM)
indexes = ints(MAX_INDEX)
node_ids = ints(MAX_NODE_ID)
partition_ids = ints(MAX_PARTITION_ID)
configs = st.builds(
    lambda voters, prio: Configuration.of(
        voters, {v: p for v, p in zip(voters, prio, strict=False)}
    ),
    st.lists(node_ids, min_size=1, max_size=5, unique=True),
    st.lists(ints(MAX_PRIORITY), max_size=5),
)
metas = st.builds(SnapshotMeta, indexes, terms, configs, terms)


@st.composite
def append_requests(draw) -> AppendRequest:
    prev = draw(ints(MAX_INDEX - 20))
    n = draw(st.integers(0, 4))
    entries = []
    for k in range(n):
        kind = draw(st.sampled_from(list(EntryKind)))
        data = draw(configs).encode() if kind is EntryKind.CONFIG else draw(st.binary(max_size=40))
        entries.append(Entry(prev + 1 + k, draw(terms), kind, data))
    return AppendRequest(
        draw(terms), draw(node_ids), draw(node_ids), prev, draw(terms), tuple(entries),
        draw(indexes),
    )  # fmt: skip


messages = st.one_of(
    st.builds(VoteRequest, terms, node_ids, node_ids, indexes, terms, st.booleans(), st.booleans()),
    st.builds(VoteResponse, terms, node_ids, node_ids, st.booleans(), st.booleans()),
    append_requests(),
    st.builds(AppendResponse, terms, node_ids, node_ids, st.booleans(), indexes, indexes, terms),
    st.builds(
        InstallSnapshot,
        terms,
        node_ids,
        node_ids,
        metas,
        indexes,
        st.binary(max_size=40),
        st.booleans(),
    ),
    st.builds(
        InstallSnapshotResponse,
        terms,
        node_ids,
        node_ids,
        indexes,
        ints(MAX_INDEX, -1),
        st.booleans(),
    ),
    st.builds(TimeoutNow, terms, node_ids, node_ids),
)

# Any value msgpack can carry, edge numbers and non-finite floats included.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from(EDGES)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=50)
    | st.text(max_size=20)
)
msgpack_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
