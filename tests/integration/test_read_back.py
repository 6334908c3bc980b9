"""``read_back`` (the "nothing lost" check of ``fab drill`` and ``make demo``) on a
cluster whose log was compacted: it reads from the load's own positions, tells
compacted records from lost ones, and still finds a record that is wrong."""

from __future__ import annotations

import dataclasses

import pytest

from broker.client import BrokerClient, InvalidArgument, OutOfRange
from broker.demo.localcluster import wait_for
from broker.ops.load import Ack, read_back
from tests.integration.test_cluster import FAST, cluster  # noqa: F401 (the fixture)


def append(client: BrokerClient, prefix: str, n: int, size: int = 1000) -> list[Ack]:
    acks = []
    for i in range(n):
        payload = f"{prefix}-{i}-".encode() + b"x" * size
        r = client.append(payload, 1)
        acks.append(Ack(r.partition, r.position, payload, 0.0, 0.0))
    return acks


def test_read_back_tells_compacted_records_from_lost_ones(cluster):  # noqa: F811 (the fixture)
    # no exporter holds the log: snapshots every 20 entries compact it soon
    overrides = {**FAST, "data": {"snapshotEntries": 20, "logSegmentSize": "64KB"}}
    c = cluster(size=2, partitions=1, replication_factor=2, overrides=overrides)
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        early = append(client, "early", 300)

        def compacted() -> bool:
            try:
                client.read(1, 1, 1)
            except OutOfRange:
                return True
            client.append(b"tick", 1)  # entries keep snapshots coming
            return False

        wait_for(compacted, 30, "the log to be compacted")
        late = append(client, "late", 30, size=10)
    gateways = c.gateways()

    # a load that began after the compaction: read from its own first position
    rb = read_back(gateways, late, 1, "late")
    assert (rb.found, rb.lost, rb.compacted) == (30, [], [])
    assert rb.records >= 30

    # a load whose first records were compacted since: not lost, not found either
    rb = read_back(gateways, early + late, 1, "early")
    assert rb.lost == []
    assert rb.compacted and rb.compacted == early[: len(rb.compacted)]
    assert rb.found == len(early) + len(late) - len(rb.compacted)

    # a kept record with other data than acknowledged is lost, compaction or not
    wrong = dataclasses.replace(late[5], payload=b"late-5-something-else")
    rb = read_back(gateways, [*early, *late[:5], wrong, *late[6:]], 1, "late")
    assert rb.lost == [wrong]


def test_read_back_still_fails_on_an_error_that_is_not_compaction(cluster):  # noqa: F811 (the fixture)
    c = cluster(size=1, partitions=1, replication_factor=1)
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        acks = append(client, "only", 3, size=10)
    bad = [*acks, Ack(2, 1, b"x", 0.0, 0.0)]  # a partition the cluster does not have
    with pytest.raises(InvalidArgument, match=r"partition must be 1\.\.1, got 2"):
        read_back(c.gateways(), bad, 2, "only", timeout=5)
