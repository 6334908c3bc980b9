import msgpack
import pytest

from broker import partition as sm
from broker.partition import PartitionState


def apply_all(state: PartitionState, *commands) -> list[dict]:  # one entry each
    start = state.applied_index
    return [state.apply(start + k + 1, c)[0] for k, c in enumerate(commands)]


def test_append_assigns_consecutive_positions():
    s = PartitionState(3)
    results = apply_all(s, *(sm.encode(sm.APPEND, b"r%d" % i) for i in range(3)))
    assert [r["position"] for r in results] == [1, 2, 3]
    assert all(r == {"ok": True, "partition": 3, "position": r["position"]} for r in results)
    assert s.applied_index == 3


def test_read_returns_records_from_a_position_and_the_next_one():
    s = PartitionState(1)
    apply_all(s, *(sm.encode(sm.APPEND, b"r%d" % i) for i in range(1, 6)))
    [r] = s.apply(10, sm.encode(sm.READ, 2, 3))
    assert r["records"] == [[2, b"r2"], [3, b"r3"], [4, b"r4"]]
    assert r["next"] == 5
    [tail] = s.apply(11, sm.encode(sm.READ, 6, 10))
    assert tail["records"] == [] and tail["next"] == 6


def test_read_is_capped_in_bytes():
    s = PartitionState(1)
    big = b"x" * (512 * 1024)
    apply_all(s, *(sm.encode(sm.APPEND, big) for _ in range(10)))
    [r] = s.apply(20, sm.encode(sm.READ, 1, 100))
    assert 1 <= len(r["records"]) < 10
    assert r["next"] == len(r["records"]) + 1


def test_kv_put_get_delete():
    s = PartitionState(2)
    put, got, missing, deleted, again = apply_all(
        s,
        sm.encode(sm.PUT, "k", b"v"),
        sm.encode(sm.GET, "k"),
        sm.encode(sm.GET, "nope"),
        sm.encode(sm.DELETE, "k"),
        sm.encode(sm.DELETE, "k"),
    )
    assert put["ok"] and got["value"] == b"v"
    assert missing["code"] == "NOT_FOUND"
    assert deleted["existed"] is True and again["existed"] is False


def test_cas_checks_the_current_value_and_absence():
    s = PartitionState(1)
    created, dup, wrong, swapped = apply_all(
        s,
        sm.encode(sm.CAS, "k", None, b"1"),
        sm.encode(sm.CAS, "k", None, b"2"),
        sm.encode(sm.CAS, "k", b"9", b"2"),
        sm.encode(sm.CAS, "k", b"1", b"2"),
    )
    assert created["ok"] and swapped["ok"]
    assert dup["code"] == wrong["code"] == "FAILED_PRECONDITION"
    assert dup["current"] == b"1"
    assert s.kv["k"] == b"2"


@pytest.mark.parametrize(
    "command",
    [b"\xc1", msgpack.packb(["nope"]), msgpack.packb(["put", "k"]), msgpack.packb(5)],
)
def test_a_corrupt_command_is_answered_not_raised(command):
    s = PartitionState(1)
    [r] = s.apply(1, command)
    assert r["ok"] is False and r["code"] == "INVALID_ARGUMENT"
    assert s.applied_index == 1  # every replica moves on the same way


def test_snapshot_restore_round_trip():
    s = PartitionState(4)
    apply_all(s, sm.encode(sm.APPEND, b"a"), sm.encode(sm.PUT, "k", b"v"))
    snapshot = s.snapshot()
    assert b"a" not in msgpack.unpackb(snapshot)["kv"].values()  # the state, not the log
    t = PartitionState(4)
    t.restore(snapshot)
    assert (t.last_position, t.kv, t.applied_index) == (1, {"k": b"v"}, 2)
    assert t.apply(3, sm.encode(sm.APPEND, b"b"))[0]["position"] == 2
    # the record below the snapshot is not here (its journal entries are not)
    [below] = t.apply(4, sm.encode(sm.READ, 1, 10))
    assert below["code"] == "OUT_OF_RANGE" and below["first"] == 2
    assert "records below position 2 were compacted" in below["message"]
    [after] = t.apply(5, sm.encode(sm.READ, 2, 10))
    assert after["records"] == [[2, b"b"]]


def test_a_snapshot_is_as_big_as_the_state_not_the_log():
    s = PartitionState(1)
    apply_all(s, *(sm.encode(sm.APPEND, b"x" * 10_000) for _ in range(100)))
    assert len(s.snapshot()) < 200 and s.last_position == 100


def test_a_version_1_snapshot_still_restores_its_state():
    v1 = msgpack.packb(
        {"v": 1, "applied": 9, "records": [b"a", b"b"], "kv": {"k": b"v"}, "exported": {"e": 1}}
    )
    t = PartitionState(1)
    t.restore(v1)
    assert (t.last_position, t.kv, t.exported, t.applied_index) == (2, {"k": b"v"}, {"e": 1}, 9)


def test_a_batch_entry_applies_every_command_in_order():
    s = PartitionState(1)
    batch = b"".join(
        [sm.encode(sm.APPEND, b"a"), sm.encode(sm.PUT, "k", b"v"), sm.encode(sm.APPEND, b"b")]
    )
    results = s.apply(7, batch)
    assert [r.get("position") for r in results] == [1, None, 2]
    assert s.kv == {"k": b"v"} and s.applied_index == 7


def test_a_corrupt_tail_in_a_batch_keeps_the_commands_before_it():
    s = PartitionState(1)
    results = s.apply(1, sm.encode(sm.APPEND, b"a") + b"\xc1")
    assert results[0]["position"] == 1
    assert results[-1]["code"] == "INVALID_ARGUMENT"


def test_restore_refuses_an_unknown_snapshot_version():
    with pytest.raises(ValueError, match="version"):
        PartitionState(1).restore(msgpack.packb({"v": 99}))


def test_exporter_positions_only_move_forward_and_survive_snapshots():
    s = PartitionState(1)
    apply_all(s, *(sm.encode(sm.APPEND, b"r") for _ in range(5)))
    apply_all(s, sm.encode(sm.EXPORTED, "region0", 3), sm.encode(sm.EXPORTED, "region0", 2))
    assert s.exported == {"region0": 3}
    apply_all(s, sm.encode(sm.EXPORTED, "region0", 99))
    assert s.exported["region0"] == 5  # never beyond what exists
    apply_all(s, sm.encode(sm.EXPORT_INIT, "region1", "region0"))
    assert s.exported["region1"] == 5
    t = PartitionState(1)
    t.restore(s.snapshot())
    assert t.exported == {"region0": 5, "region1": 5}
