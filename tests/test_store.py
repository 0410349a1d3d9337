"""One conformance suite for the store, run against memory://, file:// and S3 (moto server)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from storage import (
    CorruptRecordError,
    Lease,
    LeaseHeldError,
    LeaseLostError,
    RunRecord,
    RunStore,
    StoreError,
    decode,
    encode,
    find_runs,
    list_runs,
    open_store,
)


@pytest.fixture(params=["memory", "file", "s3"])
def store(request, tmp_path):
    if request.param == "memory":
        return open_store(f"memory://conformance-{uuid.uuid4().hex}")
    if request.param == "file":
        return open_store(str(tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_url"))


def test_read_write_and_missing(store):
    assert store.read("a/missing") is None
    store.write("a/b", b"one")
    store.write("a/b", b"two")
    assert store.read("a/b") == b"two"
    assert store.exists("a/b") and not store.exists("a/c")


def test_create_is_exclusive(store):
    assert store.create("x/seg", b"first") is True
    assert store.create("x/seg", b"second") is False
    assert store.read("x/seg") == b"first"


def test_create_races_have_one_winner(store):
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        results.append(store.create("race/obj", str(i).encode()))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_replace_if_refuses_stale_token(store):
    first = store.replace_if("cas/obj", b"v1", None)
    assert first  # the new version's token
    assert store.replace_if("cas/obj", b"again", None) is None
    data, token = store.read_versioned("cas/obj")
    assert data == b"v1" and token == first
    second = store.replace_if("cas/obj", b"v2", token)
    assert second and second != token
    assert store.replace_if("cas/obj", b"v3", token) is None  # token is stale now
    assert store.read("cas/obj") == b"v2"
    assert store.read_versioned("cas/obj")[1] == second


def test_a_conditional_write_that_meets_its_own_bytes_succeeded(store):
    # what a client's retry sees when the first request was applied and its reply was lost
    token = store.replace_if("cas/mine", b"renewal-1", None)
    assert store.replace_if("cas/mine", b"renewal-1", "stale-token-of-the-retry") == token
    assert store.create("seg/0", b"batch")
    assert store.create("seg/0", b"batch") is True  # the same bytes: this writer's own
    assert store.create("seg/0", b"other batch") is False


def test_list_read_many_delete(store):
    for i in range(5):
        store.write(f"l/{i:02d}", bytes([i]))
    store.write("other/x", b"x")
    assert store.list("l") == [f"l/{i:02d}" for i in range(5)]
    got = store.read_many(["l/00", "l/03", "l/missing"])
    assert got == {"l/00": b"\x00", "l/03": b"\x03"}
    store.delete(["l/00", "l/missing"])
    assert store.list("l") == [f"l/{i:02d}" for i in range(1, 5)]
    store.delete(["l/01", "l/03", "l/gone"])  # many at once (one request on S3)
    assert store.list("l") == ["l/02", "l/04"] and store.read("l/03") is None
    store.delete_prefix("l")
    assert store.list("l") == [] and store.read("other/x") == b"x"


def test_a_listing_holds_its_prefix_and_below_never_a_sibling_and_every_page(store):
    store.write("j/seg", b"in the folder")
    store.write("jx/seg", b"sibling")  # shares the prefix's characters, not its folder
    store.write("j2", b"sibling")
    assert store.list("j") == ["j/seg"]
    assert store.list("j/seg") == ["j/seg"]  # an object at the prefix: itself, as find does
    keys = [f"big/{i:05d}" for i in range(1205)]  # more than one S3 page of 1,000
    assert store.read_many([*keys[:1], "big/none"]) == {}
    for key in keys:
        store.write(key, key.encode())
    assert store.list("big") == keys
    got = store.read_many([*keys[::100], "big/none"])  # concurrent GETs on S3
    assert got == {k: k.encode() for k in keys[::100]}


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "a//b", "a/./b", ""])
def test_keys_are_confined_to_the_root(store, key):
    with pytest.raises(StoreError, match="refused store key"):
        store.write(key, b"x")


def test_records_are_checksummed(store):
    store.write("r/rec", encode({"a": 1, "b": [1, 2]}))
    assert decode(store.read("r/rec")) == {"a": 1, "b": [1, 2]}
    data = bytearray(store.read("r/rec"))
    data[-1] ^= 1
    with pytest.raises(CorruptRecordError):
        decode(bytes(data))
    with pytest.raises(CorruptRecordError):
        decode(bytes(data[:10]))  # torn write


def test_journal_segments_load_in_order_and_skip_corrupt(store):
    runs = RunStore(store, "App", "run-1")
    assert runs.write_segment(1, 0, [{"k": "a"}])
    assert runs.write_segment(1, 1, [{"k": "b"}, {"k": "c"}])
    assert not runs.write_segment(1, 1, [{"k": "lost"}])  # immutable
    assert runs.write_segment(2, 0, [{"k": "d"}])
    store.write(runs.segment_key(2, 1), b"CRT1garbage")
    load = runs.load_journal()
    assert [r["k"] for r in load.records] == ["a", "b", "c", "d"]
    assert load.corrupt == [runs.segment_key(2, 1)]
    assert load.next_seq == {1: 2, 2: 2}


def test_run_records_round_trip_and_listing(store):
    runs = RunStore(store, "App", "run-2")
    rec = RunRecord(app="App", run_id="run-2", app_path="m:App", entrypoint="run",
                    input={"x": 1}, input_digest="d")
    runs.write_run(rec)
    assert runs.read_run().input == {"x": 1}
    assert [r.run_id for r in list_runs(store)] == ["run-2"]
    assert [r.app for r in find_runs(store, "run-2")] == ["App"]


def expire(lease: Lease) -> None:
    """`lease`'s driver "dies": its lease is renewed to expire at once, as if it stopped."""
    short = Lease(lease.runs, ttl=0.01, owner=lease.owner)
    short.epoch = lease.epoch
    short.renew()
    time.sleep(0.05)


def test_lease_single_owner_takeover_and_fencing(store):
    runs = RunStore(store, "App", "run-3")
    first = Lease(runs, ttl=30)
    assert first.acquire() == 1
    with pytest.raises(LeaseHeldError) as info:
        Lease(runs, ttl=30).acquire()
    assert first.owner in str(info.value)
    # the first driver "dies": its lease expires; a new driver takes over with a new epoch
    expire(first)
    second = Lease(runs, ttl=30)
    assert second.acquire() == 2
    with pytest.raises(LeaseLostError):
        first.renew()  # fenced: the old driver learns it lost the run
    assert first.lost
    second.release()
    assert Lease(runs, ttl=30).acquire() == 3  # epochs only grow


def test_a_lease_taken_as_absent_falls_back_when_one_is_there(store):
    """acquire(absent=True) (the caller saw no run record) writes without reading first: a
    live lease is still refused, an expired one taken over with the next epoch, and the
    release that follows is one write that the next driver sees."""
    runs = RunStore(store, "App", "run-5")
    first = Lease(runs, ttl=30)
    assert first.acquire(absent=True) == 1
    with pytest.raises(LeaseHeldError):
        Lease(runs, ttl=30).acquire(absent=True)
    first.release()
    assert runs.store.read(runs.key("lease.msgpack")) is not None
    second = Lease(runs, ttl=30)
    assert second.acquire(absent=True) == 2  # released: taken, the epoch grows
    third = Lease(runs, ttl=30)
    with pytest.raises(LeaseHeldError):
        third.acquire()
    # second "dies" (its lease expires) and a fourth driver takes the run over: second's
    # late release is refused by its stale version and frees nothing of the fourth's
    expire(second)
    fourth = Lease(runs, ttl=30)
    assert fourth.acquire() == 3
    second.release()
    with pytest.raises(LeaseHeldError):
        Lease(runs, ttl=30).acquire()


def test_two_drivers_racing_for_a_lease_one_wins(store):
    runs = RunStore(store, "App", "run-4")
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def contend() -> None:
        barrier.wait()
        try:
            Lease(runs, ttl=30).acquire()
            outcomes.append("won")
        except LeaseHeldError:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1


def test_credentials_in_url_are_refused_without_echoing_them():
    with pytest.raises(StoreError) as info:
        open_store("s3://AKIAEXAMPLE:supersecret@bucket/prefix")
    assert "supersecret" not in str(info.value)
    assert "AKIAEXAMPLE" not in str(info.value)


def test_compaction_replaces_segments_and_survives_a_crash_before_deletes(store):
    runs = RunStore(store, "App", "run-5")
    for seq in range(10):
        assert runs.write_segment(1, seq, [{"k": f"r{seq}"}])
    load = runs.load_journal()
    expected = [f"r{i}" for i in range(10)]
    # a crash after writing the compacted segment, before deleting what it replaces
    header = {"y": "c", "covers": [k.rsplit("/", 1)[-1] for k in load.keys]}
    assert runs.write_segment(1, 10, [header, *load.records])
    crashed = runs.load_journal()
    assert [r["k"] for r in crashed.records] == expected  # each record once
    assert len(crashed.covered) == 10
    # the next compaction finishes the job
    runs.compact(2, 0, crashed.keys + crashed.covered, crashed.records)
    final = runs.load_journal()
    assert [r["k"] for r in final.records] == expected
    assert final.segments == 1 and final.covered == []


def test_s3_client_is_reused_until_the_credentials_change(s3_url, monkeypatch):
    # a client costs ~0.2 s to make; reusing it must not keep credentials a user has fixed
    from storage import _store

    first = open_store(s3_url)
    assert open_store(s3_url).fs is first.fs
    first.write("creds/probe", b"1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fixed-secret-value")
    fixed = open_store(s3_url)
    assert fixed.fs is not first.fs  # a fresh client resolves the new credentials
    assert fixed.read("creds/probe") == b"1"
    assert not any("fixed-secret-value" in key for key in _store._s3_filesystems)


@pytest.mark.parametrize("url", ["gs://bucket/prefix", "ftp://host/dir", "hdfs://nn/path",
                                 "simplecache::s3://bucket/x", "http://example/x"])
def test_a_protocol_without_real_atomic_primitives_is_refused_at_open(url):
    with pytest.raises(StoreError, match="not supported") as info:
        open_store(url)
    assert "file://" in str(info.value) and "s3://" in str(info.value)


def test_unsupported_store_exits_2_before_anything_runs(cli):
    res = cli("run", "tests.apps.counting:CountingApp", "--input", '{"count_file": "/tmp/x"}',
              "--store", "gs://bucket/prefix")
    assert res.code == 2 and "not supported" in res.stderr


def test_s3_store_retries_throttling_and_resets_itself(s3_server, s3_bucket):
    """The store's client retries a SlowDown, a reset before and a reset after the request
    (the read-back makes the last one a success), and gives up on what will not change."""
    from .faultproxy import FaultProxy

    with FaultProxy(s3_server, {}) as proxy:
        st = open_store(f"s3://{s3_bucket}/retry",
                        {"client_kwargs": {"endpoint_url": proxy.url}})
        proxy.plan = ["slowdown", "slowdown", "slowdown"]
        st.write("k", b"v1")
        assert st.read("k") == b"v1" and proxy.injected["slowdown"] == 3
        token = st.read_versioned("k")[1]
        proxy.plan = ["slowdown", "reset_after"]
        assert st.replace_if("k", b"v2", token)
        assert st.read("k") == b"v2"
        proxy.plan = ["slowdown"] * 20  # throttled for longer than it retries: a clear error
        with pytest.raises(StoreError, match=r"reduce your request rate|Service Unavailable"):
            st.write("k", b"v3")
        proxy.plan = []
        assert st.read("k") == b"v2"


# ---- issue 13: URLs that carry secrets, names, keyed records ----------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG@bPxRfiCY:EXAMPLEKEY"


def _fragments(userinfo: str) -> list[str]:
    """Every run of 4+ letters and digits in `userinfo`: none may appear in a message."""
    import re

    return re.findall(r"[A-Za-z0-9]{4,}", userinfo)


@pytest.mark.parametrize("template", [
    "s3://{ui}@bucket/prefix",
    "s3://{ui}@bucket/pre@fix",
    "s3a://{ui}@bucket",
    "simplecache::s3://{ui}@bucket/x",
    "s3://bucket::{ui}@x",
    "{ui}@bucket/prefix",
    "file://{ui}@host/data",
    "memory://{ui}@x",
    "gs://{ui}@bucket",
    "s3://[{ui}@bucket",
])
def test_no_part_of_a_urls_user_info_is_ever_shown(template, cli):
    from storage._store import _userinfo

    userinfo = f"AKIAIOSFODNN7EXAMPLE:{SECRET}"
    url = template.format(ui=userinfo)
    assert _userinfo(url) or "[" in url  # first, without side effects: no folder is made
    with pytest.raises(StoreError) as info:
        open_store(url)
    res = cli("list", "--store", url)
    assert res.code == 2, res.stderr
    for text in (str(info.value), res.stderr):
        for fragment in _fragments(userinfo):
            assert fragment not in text, (fragment, text)


@settings(max_examples=150, deadline=None)
@given(userinfo=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/+=:@", min_size=8,
                        max_size=40),
       template=st.sampled_from(["s3://{}@bucket/p", "simplecache::s3://{}@b", "{}@bucket",
                                 "file://{}@h/x", "memory://{}@x"]))
def test_user_info_of_any_shape_is_never_shown(userinfo, template):
    """Secrets hold '@', ':' and '/' (AWS secret keys do): whatever the split, no 8 characters
    in a row of the user-info reach the message."""
    from storage._store import _userinfo

    assume(not (userinfo.startswith("/") and template in ("{}@bucket", "file://{}@h/x")))
    url = template.format(userinfo)  # (else: a local path, '@' part of a folder's name)
    assert _userinfo(url)  # first, without side effects: no folder is made
    with pytest.raises(StoreError) as info:
        open_store(url)
    text = str(info.value)
    for i in range(len(userinfo) - 7):
        assert userinfo[i:i + 8] not in text, (url, text)


def test_local_paths_with_an_at_sign_are_folders(tmp_path):
    store = open_store(str(tmp_path / "runs@2026"))
    assert store.url == f"file://{tmp_path}/runs@2026"
    assert open_store(f"file://{tmp_path}/x@y").url == f"file://{tmp_path}/x@y"


@pytest.mark.parametrize("name", ["ok\n", "ok\r", "a/b", "..", "", "-x", "x" * 201, "é"])
def test_names_are_matched_whole(name):
    from storage import InvalidNameError, check_name

    with pytest.raises(InvalidNameError, match="invalid run id"):
        check_name("run id", name)
    with pytest.raises(InvalidNameError):
        RunStore(open_store("memory://names"), "App", name)


def test_keyed_records_round_trip_and_a_changed_byte_is_refused(store, monkeypatch):
    from storage import UnauthenticatedRecordError

    monkeypatch.setenv("CONNECTOR_RUNTIME_RECORD_KEY", "k" * 32)
    runs = RunStore(store, "App", "keyed")
    record = RunRecord(app="App", run_id="keyed", app_path="m:App", entrypoint="run",
                       input={"x": 1}, input_digest="d")
    runs.write_run(record)
    assert runs.write_segment(1, 0, [{"y": "v", "k": "now:0", "v": 1.5}])
    lease = Lease(runs, ttl=5)
    lease.acquire()
    assert runs.read_run().input == {"x": 1}
    assert runs.load_journal().records == [{"y": "v", "k": "now:0", "v": 1.5}]
    assert Lease(runs).read().owner == lease.owner
    data = bytearray(store.read(runs.key("run.msgpack")))
    assert data[:4] == b"CRT2"
    data[-3] ^= 0x01
    store.write(runs.key("run.msgpack"), bytes(data))
    with pytest.raises(UnauthenticatedRecordError, match="MAC does not match"):
        runs.read_run()
    problems = []
    assert list_runs(store, problems=problems) == []
    assert [p.key for p in problems] == [runs.key("run.msgpack")]
