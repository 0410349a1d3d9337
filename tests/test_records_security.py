"""Issue 13: records written by someone who may write the store, tried as the attack.

A store writer can write any object, with a valid checksum: the checksum is unkeyed and its
algorithm public. Each test forges records the way such a writer would (msgpack, blake2b, no
runtime code) and asserts what the runtime refuses, what it reports, and that nothing else
happened: the module a record names was not imported, the task its input names did not run,
the other runs were listed and resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime._errors import UsageError
from runtime.cli._allowed import allowed_apps
from runtime.cli._main import CliError, load_app
from runtime.driver import input_digest
from runtime.driver._keys import KEY_SCHEME
from storage import (
    CorruptRecordError,
    InvalidRecordError,
    Lease,
    RecordKeyError,
    RecordProblem,
    RecordTooLargeError,
    RunRecord,
    RunStatus,
    RunStore,
    UnauthenticatedRecordError,
    decode,
    encode,
    list_runs,
    open_store,
    operator_file,
    record_key,
)
from tests.apps.counting import BatchInput

REPO = Path(__file__).resolve().parent.parent
APP = "tests.apps.counting:CountingApp"
KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
KEY_ENV = {"CONNECTOR_RUNTIME_RECORD_KEY": KEY}

EVIL = '''
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("evil_app ran at import")
from application_sdk.app import App
class Evil(App):
    async def run(self, input):
        pathlib.Path(__file__).with_name("RAN").write_text("Evil.run ran")
'''


# ---- what a store writer can do without the runtime -----------------------------------------

def forged(obj) -> bytes:
    """A record as anyone can make one: CRT1, blake2b-128 of the msgpack payload."""
    payload = msgpack.packb(obj, use_bin_type=True)
    return b"CRT1" + hashlib.blake2b(payload, digest_size=16).digest() + payload


def run_dict(app: str, run_id: str, inp: dict, app_path: str = APP, **extra) -> dict:
    now = time.time()
    digest = "0" * 20
    if app == "CountingApp":
        digest = input_digest(BatchInput.model_validate(inp), KEY_SCHEME)
    return {"app": app, "run_id": run_id, "app_path": app_path, "entrypoint": "run",
            "input": inp, "input_digest": digest, "status": "RUNNING", "key_scheme": KEY_SCHEME,
            "created_at": now, "updated_at": now, **extra}


def plant(store_path: str, app: str, run_id: str, data: bytes, name: str = "run.msgpack"):
    path = Path(store_path) / "runs" / app / run_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def evil(tmp_path) -> Path:
    """A folder with a module that, if ever imported, leaves IMPORTED next to itself."""
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "evil_app.py").write_text(EVIL)
    return folder


def evil_env(evil: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment with the evil module importable (as from the current folder)."""
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{evil}", **extra}


def lines(path: Path) -> list[str]:
    return sorted(path.read_text().split("\n")[:-1]) if path.exists() else []


def failed_run(cli, tmp_path, store: str, run_id: str, env=None) -> Path:
    """A genuine run of CountingApp that failed (retryably) while `flag` exists."""
    flag = tmp_path / f"broken-{run_id}"
    flag.touch()
    inp = {"count_file": str(tmp_path / f"c-{run_id}"), "n": 2, "fail_at": 1,
           "broken_flag": str(flag)}
    res = cli("run", APP, "--input", json.dumps(inp), "--run-id", run_id, "--store", store,
              env=env)
    assert res.code == 1, res.stderr
    flag.unlink()
    return tmp_path / f"c-{run_id}"


# ---- 1. code from a record --------------------------------------------------------------------

def test_resume_all_imports_no_module_a_forged_record_names(cli, tmp_path, file_store, evil):
    genuine = failed_run(cli, tmp_path, file_store, "genuine")
    plant(file_store, "Evil", "x", forged(run_dict("Evil", "x", {}, "evil_app:Evil")))
    # a record of an app the operator allows, naming the evil module as its app_path
    inp = {"count_file": str(tmp_path / "c-swapped"), "n": 1}
    plant(file_store, "CountingApp", "swapped",
          forged(run_dict("CountingApp", "swapped", inp, "evil_app:Evil")))
    res = cli("resume", "--all", "--app", APP, "--store", file_store, env=evil_env(evil))
    assert res.code == 0, res.stderr
    assert not (evil / "IMPORTED").exists() and not (evil / "RAN").exists()
    assert "skipped x (Evil): its app Evil is not among the apps this resume may run " \
        f"(--app {APP})" in res.stderr
    assert lines(genuine) == ["work 0", "work 1"]  # the genuine run went on
    store = open_store(file_store)
    assert RunStore(store, "CountingApp", "genuine").read_run().status is RunStatus.COMPLETED
    # Without a record key, a record of an allowed app runs that app (the operator's code,
    # never the record's app_path) on the writer's input: what the key is for (below).
    assert lines(tmp_path / "c-swapped") == ["work 0"]
    assert RunStore(store, "Evil", "x").read_run().status is RunStatus.RUNNING  # untouched


def test_resume_of_a_run_id_runs_only_an_app_the_operator_names(cli, tmp_path, file_store,
                                                                 evil):
    plant(file_store, "Evil", "x", forged(run_dict("Evil", "x", {}, "evil_app:Evil\x1b[2J")))
    before = (Path(file_store) / "runs/Evil/x/run.msgpack").read_bytes()
    bare = cli("resume", "x", "--store", file_store, env=evil_env(evil))
    assert bare.code == 2, bare.stderr
    assert "resume runs only apps you name: add --app MODULE:CLASS" in bare.stderr
    assert "its record says 'evil_app:Evil\\x1b[2J'" in bare.stderr  # escaped, to check
    assert "\x1b" not in bare.stderr
    other = cli("resume", "x", "--app", APP, "--store", file_store, env=evil_env(evil))
    assert other.code == 2
    assert "run x not resumed: its app Evil is not among the apps" in other.stderr
    assert not (evil / "IMPORTED").exists()
    assert (Path(file_store) / "runs/Evil/x/run.msgpack").read_bytes() == before


def test_resume_reads_its_apps_from_an_apps_file_the_operator_owns(cli, tmp_path, file_store,
                                                                   evil):
    genuine = failed_run(cli, tmp_path, file_store, "filed")
    apps = tmp_path / "conf" / "apps.txt"
    apps.parent.mkdir(mode=0o755)
    apps.write_text(f"# apps cron may resume\n\n{APP}   # the counting app\n")
    apps.chmod(0o666)  # anyone could add a line: refused
    res = cli("resume", "--all", "--apps-file", str(apps), "--store", file_store,
              env=evil_env(evil))
    assert res.code == 2 and "is writable by other users" in res.stderr, res.stderr
    assert lines(genuine) == ["work 0"]  # nothing resumed
    apps.chmod(0o644)
    res = cli("resume", "--all", "--store", file_store,
              env=evil_env(evil, CONNECTOR_RUNTIME_APPS_FILE=str(apps)))
    assert res.code == 0, res.stderr
    assert lines(genuine) == ["work 0", "work 1"]
    assert not (evil / "IMPORTED").exists()


def test_an_unsafe_apps_file_is_refused_before_anything_is_imported(tmp_path, evil):
    imported = []

    def load(target: str):
        imported.append(target)
        return load_app(target)

    conf = tmp_path / "conf"
    conf.mkdir(mode=0o755)
    apps = conf / "apps.txt"
    apps.write_text("evil_app:Evil\n")
    apps.chmod(0o644)
    os.chown(apps, 65534, 65534)  # another user's file
    with pytest.raises(UsageError, match="is owned by another user"):
        allowed_apps([], str(apps), load)
    os.chown(apps, 0, 0)
    conf.chmod(0o777)  # a folder anyone may write to: the file could be replaced
    with pytest.raises(UsageError, match="is a folder other users may write to"):
        allowed_apps([], str(apps), load)
    conf.chmod(0o755)
    link = tmp_path / "link.txt"
    link.symlink_to(apps)
    os.lchown(link, 65534, 65534)  # a link its owner could re-point
    with pytest.raises(UsageError, match="is a link owned by another user"):
        allowed_apps([], str(link), load)
    apps.write_text("evil_app Evil\n")
    with pytest.raises(UsageError, match="line 1: 'evil_app Evil' is not module:Class"):
        allowed_apps([], str(apps), load)
    assert imported == [] and not (evil / "IMPORTED").exists()
    assert allowed_apps([], None, load) is None  # nothing named: resume refuses (exit 2)


def test_load_app_imports_the_module_only_and_checks_the_class(tmp_path, monkeypatch):
    """A target's class is looked up in the module's own namespace: no module __getattr__
    runs, nothing else it names is imported, and a name with path syntax is refused before
    any import."""
    (tmp_path / "lazy_mod.py").write_text(
        "import pathlib\n"
        "def __getattr__(name):\n"
        "    pathlib.Path(__file__).with_name('LAZY').write_text(name)\n"
        "    import evil_app\n"
        "    return evil_app.Evil\n")
    (tmp_path / "evil_app.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(CliError, match="module 'lazy_mod' has no 'Evil'"):
            load_app("lazy_mod:Evil")
        for target in ("../evil_app:Evil", "evil_app:Evil;x", "evil_app:Evil()",
                       "/tmp/evil_app:Evil", "evil_app.:Evil", "evil_app:__import__('os')"):
            with pytest.raises(CliError, match="must be dotted Python names"):
                load_app(target)
        with pytest.raises(CliError, match=r"not an application_sdk\.app\.App subclass"):
            load_app("lazy_mod:pathlib")
        assert not (tmp_path / "LAZY").exists() and not (tmp_path / "IMPORTED").exists()
        assert "evil_app" not in sys.modules
        assert load_app("tests.apps.counting:CountingApp").name == "CountingApp"
    finally:
        sys.modules.pop("lazy_mod", None)


# ---- 2. keyed records ---------------------------------------------------------------------

def test_with_a_record_key_forged_records_are_refused_and_never_run(cli, tmp_path,
                                                                     file_store, evil):
    genuine = failed_run(cli, tmp_path, file_store, "keyed", env=KEY_ENV)
    store = Path(file_store)
    written = (store / "runs/CountingApp/keyed/run.msgpack").read_bytes()
    assert written.startswith(b"CRT2")
    # 1: a record written without the key, as any store writer can
    inp = {"count_file": str(tmp_path / "c-forged"), "n": 1}
    plant(file_store, "CountingApp", "forged", forged(run_dict("CountingApp", "forged", inp)))
    # 2: a genuine record whose input was changed, its unkeyed checksum made to match
    body = msgpack.unpackb(written[56:], raw=False)
    body["input"]["count_file"] = str(tmp_path / "c-tampered")
    payload = msgpack.packb(body, use_bin_type=True)
    tampered = b"CRT2" + hashlib.blake2b(payload, digest_size=16).digest() + written[20:56] \
        + payload
    (store / "runs/CountingApp/keyed/run.msgpack").write_bytes(tampered)
    res = cli("resume", "--all", "--app", APP, "--store", file_store,
              env=evil_env(evil, **KEY_ENV))
    assert res.code == 1, res.stderr  # refused records make the pass fail, after the others
    assert "skipped runs/CountingApp/forged/run.msgpack: carries no MAC" in res.stderr
    assert "skipped runs/CountingApp/keyed/run.msgpack: its MAC does not match" in res.stderr
    assert not (tmp_path / "c-forged").exists() and not (tmp_path / "c-tampered").exists()
    assert lines(genuine) == ["work 0"]
    # the genuine record back: resumed, and everything written since carries the key too
    (store / "runs/CountingApp/keyed/run.msgpack").write_bytes(written)
    res = cli("resume", "keyed", "--app", APP, "--store", file_store, env=KEY_ENV)
    assert res.code == 0, res.stderr
    assert lines(genuine) == ["work 0", "work 1"]
    records = [p for p in (store / "runs/CountingApp/keyed").rglob("*.msgpack")]
    assert records and all(p.read_bytes().startswith(b"CRT2") for p in records)
    everything = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    assert KEY.encode() not in everything  # the key is never in the store
    # without the key, records are read by their checksum, as before
    listing = cli("list", "--store", file_store)
    assert "keyed\tCountingApp\tCOMPLETED" in listing.stdout, listing.stderr


def test_a_mac_binds_a_record_to_its_place_and_its_key(monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_RECORD_KEY", KEY)
    data = encode({"run": 1}, "runs/A/one/run.msgpack")
    assert decode(data, where="runs/A/one/run.msgpack") == {"run": 1}
    with pytest.raises(UnauthenticatedRecordError, match="MAC does not match"):
        decode(data, "runs/A/two/run.msgpack", where="runs/A/two/run.msgpack")  # replayed
    monkeypatch.setenv("CONNECTOR_RUNTIME_RECORD_KEY", KEY[::-1])
    with pytest.raises(UnauthenticatedRecordError, match="signed with another record key"):
        decode(data, where="runs/A/one/run.msgpack")
    monkeypatch.delenv("CONNECTOR_RUNTIME_RECORD_KEY")
    assert decode(data, where="anything") == {"run": 1}  # no key: the checksum decides
    flipped = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(CorruptRecordError, match="checksum mismatch"):
        decode(flipped)


def test_with_a_key_a_forged_journal_segment_is_ignored(monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_RECORD_KEY", KEY)
    store = open_store("memory://keyed-journal")
    runs = RunStore(store, "A", "r")
    assert runs.write_segment(1, 0, [{"y": "t", "k": "a:1:0", "n": "a", "o": b"\x80", "a": 1}])
    fake = [{"y": "t", "k": "b:1:0", "n": "b", "o": b"\x80", "a": 1},
            {"y": "s", "e": 9, "seen": {1: 0}}]  # would also fence off the genuine segment
    store.write(runs.segment_key(9, 0), forged(fake))
    load = runs.load_journal()
    assert [r["k"] for r in load.records] == ["a:1:0"]
    assert load.corrupt == [runs.segment_key(9, 0)] and load.fenced == []
    assert "carries no MAC" in load.problems[runs.segment_key(9, 0)]


@pytest.mark.parametrize(("env", "expected"), [
    ({"CONNECTOR_RUNTIME_RECORD_KEY": "short"}, "fewer than 16"),
    ({"CONNECTOR_RUNTIME_RECORD_KEY": KEY, "CONNECTOR_RUNTIME_RECORD_KEY_FILE": "/x"},
     "set one of them"),
    ({"CONNECTOR_RUNTIME_RECORD_KEY_FILE": "/nonexistent/key"}, "cannot read the key file"),
])
def test_an_unusable_record_key_exits_2_before_anything_is_read(cli, file_store, env,
                                                                expected):
    res = cli("list", "--store", file_store, env=env)
    assert res.code == 2 and expected in res.stderr, res.stderr


def test_a_key_file_must_be_private(tmp_path, monkeypatch):
    key_file = tmp_path / "keys" / "record.key"
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("CONNECTOR_RUNTIME_RECORD_KEY_FILE", str(key_file))
    for mode, why in ((0o644, "readable by every user"), (0o620, "writable by other users")):
        key_file.chmod(mode)
        with pytest.raises(RecordKeyError, match=why):
            record_key()
    key_file.chmod(0o640)
    key = record_key()
    assert key is not None and key.secret == KEY.encode() and KEY not in repr(key)
    os.chown(key_file, 65534, 0)
    with pytest.raises(RecordKeyError, match="owned by another user"):
        operator_file(str(key_file), "record key file", "x", secret=True)


# ---- 3. hostile types ---------------------------------------------------------------------

HOSTILE = {
    "wrong-status": lambda d: {**d, "status": "PWNED"},
    "input-a-list": lambda d: {**d, "input": [1, 2]},
    "app-an-int": lambda d: {**d, "app": 7},
    "not-a-map": lambda d: ["run", "record"],
    "other-folder": lambda d: {**d, "run_id": "genuine"},
    "deep-input": lambda d: {**d, "input": _nested(100)},
    "error-a-string": lambda d: {**d, "error": "boom"},
}


def _nested(depth: int):
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_cli_reports_each_hostile_record_by_key_and_serves_the_others(cli, tmp_path,
                                                                     file_store):
    good = {"count_file": str(tmp_path / "c-good"), "n": 1}
    assert cli("run", APP, "--input", json.dumps(good), "--run-id", "good", "--store",
               file_store).code == 0
    for name, make in HOSTILE.items():
        plant(file_store, "CountingApp", name,
              forged(make(run_dict("CountingApp", name, {"count_file": "x"}))))
    kept = [Path(file_store) / "retained/CountingApp/wrong-status/part.bin",
            Path(file_store) / "runs/CountingApp/wrong-status/files/part.bin"]
    for path in kept:  # objects of a run whose record cannot be trusted, long past retention
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"kept")
        os.utime(path, (time.time() - 90 * 86400,) * 2)
    before = {p: p.read_bytes() for p in Path(file_store).rglob("*") if p.is_file()
              and "/good/" not in str(p)}
    listing = cli("list", "--store", file_store)
    assert listing.code == 0, listing.stderr
    assert listing.stdout.splitlines() == ["good\tCountingApp\tCOMPLETED\t3 tasks"]
    for name in HOSTILE:
        assert f"warning: skipped runs/CountingApp/{name}/run.msgpack: " in listing.stderr
    assert "field 'status': Input should be" in listing.stderr
    assert "names run CountingApp/genuine but is stored in another run's folder" \
        in listing.stderr
    assert "nested deeper than 64 levels" in listing.stderr
    assert "Traceback" not in listing.stderr
    status = cli("status", "good", "--store", file_store, "--json")
    assert status.code == 0 and json.loads(status.stdout)["state"] == "COMPLETED"
    bad = cli("status", "wrong-status", "--store", file_store)
    assert bad.code == 1 and "runs/CountingApp/wrong-status/run.msgpack: not a valid run " \
        "record: field 'status'" in bad.stderr and "Traceback" not in bad.stderr
    gc = cli("gc", "--older-than", "30d", "--yes", "--store", file_store)
    assert gc.code == 0 and "skipped runs/CountingApp/deep-input/run.msgpack" in gc.stderr
    resumed = cli("resume", "--all", "--app", APP, "--store", file_store)
    assert resumed.code == 1 and "Traceback" not in resumed.stderr, resumed.stderr
    assert resumed.stderr.count("skipped runs/CountingApp/") == len(HOSTILE)
    after = {p: p.read_bytes() for p in Path(file_store).rglob("*") if p.is_file()
             and "/good/" not in str(p)}
    assert after == before  # nothing was resumed, rewritten or deleted, gc kept their objects


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
                     | st.text(max_size=5) | st.binary(max_size=3),
                     lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=3), kids, max_size=3), max_leaves=10)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(sorted(RunRecord.model_fields)), _json,
                              min_size=1, max_size=4))
@example(fields={"error": {"": b"\x80"}})  # found by this test: listed, then not renderable
@example(fields={"progress": {"a": [1, {"b": b"x"}]}})
def test_list_runs_never_fails_on_hostile_fields(fields):
    """Any valid-checksum record with fields of any JSON type: listed if it fits the schema,
    else reported by key; the genuine record is always listed, nothing raises."""
    store = open_store("memory://hostile-types")
    genuine = RunRecord(app="A", run_id="genuine", app_path="m:A", entrypoint="run",
                        input={}, input_digest="d")
    RunStore(store, "A", "genuine").write_run(genuine)
    body = {**run_dict("A", "hostile", {}), **fields}
    store.write("runs/A/hostile/run.msgpack", forged(body))
    problems: list[RecordProblem] = []
    listed = list_runs(store, problems=problems)
    assert "genuine" in [r.run_id for r in listed]
    assert len(listed) + len(problems) == 2
    for record in listed:  # what is listed is what `list`, `status` and the service need
        assert isinstance(record.app, str) and isinstance(record.input, dict)
        assert (record.app, record.run_id) in {("A", "genuine"), ("A", "hostile")}
        json.dumps(record.model_dump(mode="json"))
    assert all(p.key == "runs/A/hostile/run.msgpack" for p in problems)


@pytest.mark.parametrize("lease", [
    {"owner": 1, "host": "h", "pid": 1, "epoch": 1, "expires_at": 1e12},
    {"owner": "o", "host": "h", "pid": -1, "epoch": 1, "expires_at": 1e12},
    {"owner": "o", "host": "h", "pid": 1, "epoch": 2**64 - 1, "expires_at": 1e12},
    {"owner": "o", "host": "h", "pid": 1, "epoch": 1, "expires_at": float("nan")},
    {"owner": "o", "host": "h", "pid": 1, "epoch": 1, "expires_at": "never"},
    {"owner": "o", "host": "h", "pid": 1, "epoch": 1},
    ["o", "h", 1, 1, 1e12],
])
def test_a_hostile_lease_reads_as_no_lease(lease):
    store = open_store("memory://hostile-lease")
    runs = RunStore(store, "A", "r")
    store.write(runs.key("lease.msgpack"), forged(lease))
    assert Lease(runs).read() is None
    taken = Lease(runs)
    assert taken.acquire() >= 1  # a driver can claim the run, as after a corrupt lease


def test_a_hostile_journal_segment_is_reported_and_the_others_load():
    store = open_store("memory://hostile-journal")
    runs = RunStore(store, "A", "r")
    assert runs.write_segment(1, 0, [{"y": "t", "k": "a", "n": "a", "o": b"", "a": 1}])
    hostile = {
        runs.segment_key(1, 1): [{"y": "t", "k": 5, "n": "a", "o": b"", "a": 1}],
        runs.segment_key(1, 2): {"y": "t"},
        runs.segment_key(1, 3): [{"y": "f", "k": "b", "n": "b", "a": 1, "e": {1: 2}, "r": 0}],
        runs.segment_key(1, 4): [{"y": "s", "e": 2, "seen": {"1": "x"}}],
        runs.segment_key(1, 5): [{"y": "t", "k": "a", "n": "a", "o": b"", "a": 1},
                                 {"y": "c", "covers": ["../../../x"]}],
        runs.segment_key(1, 6): [{"y": "h", "k": "h", "d": _nested(100)}],
        runs.key("journal/evil.msgpack"): [],
    }
    for key, body in hostile.items():
        store.write(key, forged(body))
    assert runs.write_segment(1, 7, [{"y": "v", "k": "v", "v": 3}])
    load = runs.load_journal()
    assert [r["k"] for r in load.records] == ["a", "v"]
    assert sorted(load.corrupt) == sorted(hostile)
    assert "not a journal segment name" in load.problems[runs.key("journal/evil.msgpack")]
    assert "field 'k' must be str" in load.problems[runs.segment_key(1, 1)]
    assert "nested deeper than 64" in load.problems[runs.segment_key(1, 6)]
    assert load.next_seq == {1: 8}


# ---- 4. sizes -----------------------------------------------------------------------------

def _peak_kib(store: str) -> tuple[int, str]:
    """`list` in a fresh process: (its peak resident memory in KiB, its stderr)."""
    code = ("import resource, sys\n"
            "from runtime.cli._main import main\n"
            "rc = main(sys.argv[1:])\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, "list", "--store", store], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stderr.rsplit("PEAK", 1)[1].split()[0])
    return peak, proc.stderr


def _empty_maps(n: int) -> bytes:
    payload = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n  # array32 of n empty maps
    return b"CRT1" + hashlib.blake2b(payload, digest_size=16).digest() + payload


def test_records_of_empty_maps_cannot_blow_up_list(tmp_path):
    """A 10 MB record of empty maps took `list` to 774 MiB: now it is refused before it is
    decoded, and one just under the limit is refused while decoding, within a bounded
    budget of maps."""
    store = str(tmp_path / "store")
    RunStore(open_store(store), "A", "fine").write_run(RunRecord(
        app="A", run_id="fine", app_path="m:A", entrypoint="run", input={}, input_digest="d"))
    base, _ = _peak_kib(store)
    plant(store, "A", "huge", _empty_maps(10_000_000))
    peak, err = _peak_kib(store)
    assert "skipped runs/A/huge/run.msgpack: 9.5 MiB, over the 8.0 MiB limit" in err
    assert peak - base < 48 * 1024, (base, peak)
    (Path(store) / "runs/A/huge/run.msgpack").unlink()
    plant(store, "A", "dense", _empty_maps(8 * 2**20 - 64))
    peak, err = _peak_kib(store)
    assert "skipped runs/A/dense/run.msgpack: more than 1,114,104 maps and arrays" in err
    assert peak - base < 192 * 1024, (base, peak)


def test_writers_refuse_a_record_readers_would_refuse():
    store = open_store("memory://too-large")
    runs = RunStore(store, "A", "big")
    record = RunRecord(app="A", run_id="big", app_path="m:A", entrypoint="run",
                       input={"blob": "x" * (9 * 2**20)}, input_digest="d")
    with pytest.raises(RecordTooLargeError, match=r"over the 8\.0 MiB limit.*pass large data by "
                       "reference"):
        runs.write_run(record)
    assert store.read(runs.key("run.msgpack")) is None


def test_a_record_over_the_limit_is_refused_before_decoding(monkeypatch):
    """The size check comes first: msgpack never sees the bytes."""
    def exploding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(msgpack, "unpackb", exploding)
    with pytest.raises(RecordTooLargeError, match="refused before decoding"):
        decode(b"CRT1" + b"\0" * 70_000, "lease", limit=64 * 1024)
    with pytest.raises(InvalidRecordError):
        decode(b"CRT1" + b"\0" * 70_000, "lease", limit=64 * 1024)


# ---- 5. the service ---------------------------------------------------------------------------

def test_the_service_resumes_orphans_of_its_own_app_only_and_skips_what_it_cannot_run(
        ray_session, tmp_path, evil):
    """`serve --resume-orphans` launches drivers of the app it serves, whatever a record's
    app_path says; a record of another app is left alone, and one its app cannot run (an
    unknown entry point) is skipped without ending the pass."""
    from tests.apps.serviceapp.service_app import SquaresInput
    from tests.test_service import end_leftovers, markers, result, start_service

    store = str(tmp_path / "store")
    folder = tmp_path / "m"

    def orphan(run_id: str, created: float, **extra) -> bytes:
        inp = {"marker_dir": str(folder), "n": 2}
        body = {**run_dict("ServiceApp", run_id, inp, "evil_app:Evil"),
                "entrypoint": "extract_squares", "created_at": created,
                "input_digest": input_digest(SquaresInput.model_validate(inp), KEY_SCHEME),
                **extra}
        return forged(body)

    plant(store, "ServiceApp", "orphan-bad", orphan("orphan-bad", 1.0, entrypoint="nope"))
    plant(store, "ServiceApp", "orphan-ok", orphan("orphan-ok", 2.0))
    plant(store, "Evil", "orphan-evil",
          forged({**run_dict("Evil", "orphan-evil", {}, "evil_app:Evil"), "created_at": 3.0}))
    plant(store, "ServiceApp", "typed", forged({**run_dict("ServiceApp", "typed", {}),
                                                "status": ["RUNNING"], "created_at": 0.5}))
    svc = start_service(tmp_path, store=store, args=("--launcher", "process",
                                                     "--resume-orphans"),
                        env={"RAY_ADDRESS": ray_session,
                             "PYTHONPATH": f"{REPO}{os.pathsep}{evil}"})
    try:
        res = result(svc.client(), "orphan-ok")
        assert res.json()["data"] == {"count": 2, "total": 1}, res.text
        output = svc.output()
        assert "1 run(s) resumed: orphan-ok" in output, output[-3000:]
        assert "run orphan-bad: not resumed, its record does not fit ServiceApp" in output
        assert markers(folder) == {0: 1, 1: 1}
        runs = svc.client().get("/workflows/v1/runs").json()  # the run list goes on too
        assert sorted(r["run_id"] for r in runs["data"]) == ["orphan-bad", "orphan-ok"]
        assert "skipped runs/ServiceApp/typed/run.msgpack: not a valid run record: field " \
            "'status'" in svc.output()
        assert not (evil / "IMPORTED").exists() and not (evil / "RAN").exists()
        evil_record = RunStore(open_store(store), "Evil", "orphan-evil").read_run()
        assert evil_record.status is RunStatus.RUNNING  # another app's run: untouched
    finally:
        svc.stop()
        end_leftovers(svc.marker)


def test_bench_records_runs_at_a_small_size():
    """The benchmark of this file's costs cannot rot (figures exist; no timing asserted)."""
    from benchmarks.bench_records import run

    figures = run(records=200, runs=20, repeats=1)
    assert all(v > 0 for group in ("codec", "journal", "list") for v in figures[group].values())
    assert figures["hostile"]["peak RSS MiB: ours"] < figures["hostile"]["peak RSS MiB: old"]
