"""What validating records at the store boundary costs, and what a hostile record costs now.

Side by side, in one run, on this machine:

- decode a journal segment of N realistic records: the limit is the old path, msgpack plus
  the blake2b checksum and nothing else; ours adds the map/array budget and the per-kind type
  checks (`storage._records.check_journal_batch`), then the same with a record key (HMAC-SHA256
  instead of the checksum);
- encode the same segment: old (msgpack + checksum) against ours with a key;
- `load_journal` of those N records from a file:// store (one segment), without and with a
  key, against listing, reading and decoding the same segment the old way;
- `list_runs` of R run records: the old path (list, read, decode, `RunRecord.model_validate`)
  against ours (plus the folder and nesting checks), without and with a key;
- a 10 MB record of empty maps, in a fresh process each: peak RSS of decoding it the old way
  (what `list` did) against `storage.decode` with the run-record limit (refused unread).

`run(records, runs, repeats)` returns the figures; `python -m benchmarks.bench_records` prints
them with the ratios.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import msgpack

from storage import RunRecord, RunStore, decode, encode, list_runs, open_store
from storage._records import check_journal_batch, run_record_limit

__all__ = ["run"]

KEY_VAR = "CONNECTOR_RUNTIME_RECORD_KEY"
KEY = "bench-" + "5a" * 24


def _journal(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        key = f"fetch:{hashlib.blake2b(str(i).encode(), digest_size=10).hexdigest()}:0"
        out.append({"y": "t", "k": key, "n": "fetch", "a": 1,
                    "o": msgpack.packb({"rows": i, "path": f"runs/A/r/files/{i}"}),
                    "ts": {"d": 1.0 + i, "s": 1.1 + i, "e": 1.2 + i}})
        if i % 10 == 0:
            out.append({"y": "o", "k": key, "p": f"runs/A/r/files/{i}", "t": "transient"})
    return out


def _old_encode(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return b"CRT1" + hashlib.blake2b(payload, digest_size=16).digest() + payload


def _old_decode(data: bytes) -> Any:
    payload = memoryview(data)[20:]
    if hashlib.blake2b(payload, digest_size=16).digest() != data[4:20]:
        raise ValueError("checksum")
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


def _compare(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run in turn (order rotated each round) so that load
    from other processes falls on all of them alike."""
    names = list(variants)
    for name in names:
        variants[name]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class _Keyed:
    """Runs `fn` with the record key set (restored after)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def __call__(self) -> Any:
        os.environ[KEY_VAR] = KEY
        try:
            return self.fn()
        finally:
            os.environ.pop(KEY_VAR, None)


def codec_costs(records: int, repeats: int) -> dict[str, float]:
    batch = _journal(records)
    old = _old_encode(batch)
    keyed = _Keyed(lambda: encode(batch, "k"))()
    figures = {"segment bytes": float(len(old))}
    figures.update(_compare({
        "decode: old (msgpack + checksum)": lambda: _old_decode(old),
        "decode: validated": lambda: check_journal_batch(decode(old, "k", where="k"), "k"),
        "decode: validated, keyed": _Keyed(
            lambda: check_journal_batch(decode(keyed, "k", where="k"), "k")),
        "encode: old (msgpack + checksum)": lambda: _old_encode(batch),
        "encode: keyed": _Keyed(lambda: encode(batch, "k")),
    }, repeats))
    return figures


def journal_costs(records: int, repeats: int, folder: str) -> dict[str, float]:
    batch = _journal(records)
    plain = RunStore(open_store(os.path.join(folder, "journal")), "A", "r")
    plain.write_segment(1, 0, batch)
    keyed = RunStore(open_store(os.path.join(folder, "journal-keyed")), "A", "r")
    _Keyed(lambda: keyed.write_segment(1, 0, batch))()
    return _compare({
        "list + read + old decode": lambda: [_old_decode(d) for d in plain.store.read_many(
            plain.store.list(plain.key("journal"))).values()],
        "load_journal": plain.load_journal,
        "load_journal, keyed": _Keyed(keyed.load_journal),
    }, repeats)


def list_costs(runs: int, repeats: int, folder: str) -> dict[str, float]:
    plain = open_store(os.path.join(folder, "runs"))
    keyed = open_store(os.path.join(folder, "runs-keyed"))
    for i in range(runs):
        record = RunRecord(app="A", run_id=f"r{i}", app_path="m:A", entrypoint="run",
                           input={"table": f"t{i}", "columns": ["a", "b", "c"]},
                           input_digest="d", progress={"done": 10, "attempts": 11})
        RunStore(plain, "A", f"r{i}").write_run(record)
        _Keyed(lambda: RunStore(keyed, "A", f"r{i}").write_run(record))()  # noqa: B023

    def old_list() -> list[RunRecord]:  # what list_runs did before validation
        keys = [f"runs/{app}/{rid}/run.msgpack" for app in plain.list_dirs("runs")
                for rid in plain.list_dirs(f"runs/{app}")]
        return [RunRecord.model_validate(_old_decode(d)) for d in plain.read_many(keys).values()]

    return _compare({
        "old list_runs": old_list,
        "list_runs": lambda: list_runs(plain),
        "list_runs, keyed": _Keyed(lambda: list_runs(keyed)),
    }, repeats)


_PEAK = """
import sys
data = open(sys.argv[1], "rb").read()
if sys.argv[2] == "old":
    import msgpack
    msgpack.unpackb(memoryview(data)[20:], raw=False, strict_map_key=False)
else:
    from storage import decode, StoreError
    from storage._records import run_record_limit
    try:
        decode(data, "run record", limit=run_record_limit())
    except StoreError:
        pass
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child of a big
# parent (a test session) would report the parent's peak.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def hostile_memory(folder: str) -> dict[str, float]:
    """Peak RSS (MiB) of a fresh process given 10 MB of empty maps as a run record."""
    n = 10_000_000
    payload = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    path = os.path.join(folder, "empty-maps.msgpack")
    with open(path, "wb") as fh:
        fh.write(b"CRT1" + hashlib.blake2b(payload, digest_size=16).digest() + payload)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    figures = {}
    for how in ("old", "ours"):
        out = subprocess.run([sys.executable, "-c", _PEAK, path, how], capture_output=True,
                             text=True, check=True, env=env)
        figures[f"peak RSS MiB: {how}"] = int(out.stdout.strip()) / 1024
    figures["run record limit MiB"] = run_record_limit() / 2**20
    return figures


def run(records: int = 5000, runs: int = 1000, repeats: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        return {
            "records": records, "runs": runs,
            "codec": codec_costs(records, repeats),
            "journal": journal_costs(records, repeats, folder),
            "list": list_costs(runs, repeats, folder),
            "hostile": hostile_memory(folder),
        }


def _row(name: str, value: float, base: float | None) -> str:
    ratio = f"{value / base:5.2f}x" if base else "   -  "
    return f"  {name:<40} {value * 1000:9.2f} ms  {ratio}"


def print_table(r: dict[str, Any]) -> None:
    codec, journal, listing, hostile = r["codec"], r["journal"], r["list"], r["hostile"]
    print(f"journal segment of {r['records']:,} task records "
          f"({codec['segment bytes'] / 2**20:.1f} MiB); ratio against the old path")
    base = codec["decode: old (msgpack + checksum)"]
    for name in ("decode: old (msgpack + checksum)", "decode: validated",
                 "decode: validated, keyed"):
        print(_row(name, codec[name], base))
    base = codec["encode: old (msgpack + checksum)"]
    for name in ("encode: old (msgpack + checksum)", "encode: keyed"):
        print(_row(name, codec[name], base))
    base = journal["list + read + old decode"]
    for name in ("list + read + old decode", "load_journal", "load_journal, keyed"):
        print(_row(name, journal[name], base))
    print(f"list_runs of {r['runs']:,} run records, file://")
    base = listing["old list_runs"]
    for name in ("old list_runs", "list_runs", "list_runs, keyed"):
        print(_row(name, listing[name], base))
    print("10 MB run record of empty maps, a fresh process each")
    print(f"  peak RSS: old decode {hostile['peak RSS MiB: old']:.0f} MiB, "
          f"storage.decode {hostile['peak RSS MiB: ours']:.0f} MiB (refused: over the "
          f"{hostile['run record limit MiB']:.0f} MiB limit)")


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:3]]
    print_table(run(*sizes))
