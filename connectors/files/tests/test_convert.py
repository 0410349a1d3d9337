"""Files connector library on real files (local directory and a moto S3 server)."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.files import (
    MalformedFileError,
    batch_files,
    convert_file,
    infer_files_schema,
    infer_schema,
    list_files,
    output_url,
    schema_from_json,
    schema_to_json,
    unify_schemas,
)

# Line numbers below are physical 1-based lines of these texts.
A_CSV = "id,name,score\n1,alice,10\n2,bob,20\n3,carol,30\n"
B_CSV = (
    "id,name,score,city,joined\n"  # 1
    "4,dave,1.5,Berlin,2024-01-02\n"  # 2
    "5,erin,2.5,Paris,2024-02-03,extra\n"  # 3: too many fields
    "\n"  # 4: blank, ignored
    '6,"fr\nank",3.0,Rome,2024-03-04\n'  # 5-6: quoted newline
    "7,gina\n"  # 7: too few fields
    "8,hal,4.0,,2024-05-06\n"  # 8: empty city -> null
)
C_JSONL = (
    '{"id": 9, "name": "ivan", "score": 7, "tags": ["x", "y"], "active": true}\n'  # 1
    '{"id": 10, "name": "judy", "score": 8.5\n'  # 2: truncated line
    "[1, 2]\n"  # 3: not an object
    "\n"  # 4: blank
    '{"id": 11, "name": "kim", "active": false, "meta": {"k": 1}}\n'  # 5
)
D_JSON = json.dumps([{"id": 12, "name": "leo", "score": 9}, {"id": 13, "name": "mia"}])
BAD_JSON = '[{"id": 14, "name": "ned"}, {"id": 15, "na'  # truncated document
GARBAGE_CSV = b"id,name\n\xff\xfe\x00\x81garbage\x9c,\x80\n"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    (src / "a.csv").write_text(A_CSV)
    (src / "b.csv").write_text(B_CSV)
    (src / "nested" / "c.jsonl").write_text(C_JSONL)
    (src / "d.json").write_text(D_JSON)
    (src / "bad.json").write_text(BAD_JSON)
    (src / "garbage.csv").write_bytes(GARBAGE_CSV)
    (src / "notes.txt").write_text("not data\n")
    (src / ".hidden.csv").write_text("x\n1\n")
    return src


EXPECTED = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("score", pa.float64()),
        ("city", pa.string()),
        ("joined", pa.date32()),
        ("tags", pa.string()),
        ("active", pa.bool_()),
        ("meta", pa.string()),
    ]
)
GOOD = ["a.csv", "b.csv", "d.json", "nested/c.jsonl"]


def test_list_and_batch(data_dir: Path) -> None:
    files = list_files(str(data_dir))
    assert files == sorted(
        str(data_dir / n)
        for n in ["a.csv", "b.csv", "bad.json", "d.json", "garbage.csv", "nested/c.jsonl"]
    )
    assert list_files(str(data_dir), patterns=["*.JSONL"]) == [str(data_dir / "nested/c.jsonl")]
    assert list_files(f"file://{data_dir}", patterns=["a.csv"]) == [f"file://{data_dir}/a.csv"]
    assert batch_files(files, 4) == [files[:4], files[4:]]
    assert batch_files([], 3) == []
    with pytest.raises(ValueError):
        batch_files(files, 0)
    with pytest.raises(ValueError, match="credentials") as exc:
        list_files("s3://AKIA:s3cr3t@bucket/x")
    assert "s3cr3t" not in str(exc.value)


def test_infer_and_unify(data_dir: Path) -> None:
    a = infer_schema(str(data_dir / "a.csv"))
    b = infer_schema(str(data_dir / "b.csv"))
    c = infer_schema(str(data_dir / "nested/c.jsonl"))
    assert a == pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.int64())])
    assert b.field("score").type == pa.float64()
    assert b.field("joined").type == pa.date32()
    assert c.field("tags").type == pa.string()  # nested values are kept as JSON text
    assert c.field("meta").type == pa.string()

    unified = unify_schemas([a, b, c, infer_schema(str(data_dir / "d.json"))])
    assert unified == EXPECTED
    assert all(f.nullable for f in unified)

    # Unification is a join: batch-wise unification gives the same types (column
    # order is first-seen, so it follows the grouping).
    def types(schema: pa.Schema) -> dict[str, pa.DataType]:
        return {f.name: f.type for f in schema}

    grouped = unify_schemas([unify_schemas([a, c]), schema_to_json(b)])
    assert types(grouped) == types(unify_schemas([a, b, c]))

    def join(*ts: pa.DataType) -> pa.DataType:
        schemas = [pa.schema([pa.field("v", t, nullable=pa.types.is_null(t))]) for t in ts]
        return unify_schemas(schemas)[0].type

    assert join(pa.int64(), pa.float64()) == pa.float64()
    assert join(pa.int64(), pa.string()) == pa.string()
    assert join(pa.float64(), pa.string()) == pa.string()
    assert join(pa.bool_(), pa.int64()) == pa.string()  # "true" would not cast to a number
    assert join(pa.null(), pa.int64()) == pa.int64()
    assert join(pa.date32(), pa.timestamp("us")) == pa.timestamp("us")
    assert pa.types.is_decimal(join(pa.int32(), pa.decimal128(10, 2)))  # pyarrow promotion
    assert unify_schemas([pa.schema([pa.field("v", pa.int64(), nullable=False)])])[0].nullable

    summary = infer_files_schema(list_files(str(data_dir)))
    assert schema_from_json(summary["schema"]) == EXPECTED
    assert summary["files"] == 4
    errors = {Path(e["source"]).name: e["error"] for e in summary["errors"]}
    assert set(errors) == {"bad.json", "garbage.csv"}
    json.dumps(summary)  # JSON-able as promised

    with pytest.raises(MalformedFileError) as exc:
        infer_schema(str(data_dir / "garbage.csv"))
    assert exc.value.retryable is False
    assert "UTF-8" in exc.value.reason
    again = pickle.loads(pickle.dumps(exc.value))  # crosses Ray process boundaries
    assert (again.source, again.reason) == (exc.value.source, exc.value.reason)


def test_convert_directory(data_dir: Path, tmp_path: Path) -> None:
    files = list_files(str(data_dir))
    schema_json = infer_files_schema(files)["schema"]
    out_dir = tmp_path / "out"
    results = {Path(f).name: convert_file(f, schema_json, str(out_dir) + "/") for f in files}
    json.dumps(results)

    rows = {name: r["rows"] for name, r in results.items() if r["error"] is None}
    assert rows == {"a.csv": 3, "b.csv": 3, "c.jsonl": 2, "d.json": 2}

    assert results["b.csv"]["rejected"] == [
        {"line": 3, "reason": "expected 5 fields, got 6"},
        {"line": 7, "reason": "expected 5 fields, got 2"},
    ]
    assert results["c.jsonl"]["rejected_count"] == 2
    (trunc, not_obj) = results["c.jsonl"]["rejected"]
    assert trunc["line"] == 2 and trunc["reason"].startswith("invalid JSON")
    assert not_obj == {"line": 3, "reason": "not a JSON object (got list)"}
    assert results["a.csv"]["rejected"] == []

    # Malformed files: reported by name with a reason, nothing written.
    bad, garbage = results["bad.json"], results["garbage.csv"]
    assert bad["source"].endswith("bad.json") and bad["output"] is None
    assert "invalid JSON document" in bad["error"] and "line 1" in bad["error"]
    assert garbage["output"] is None and "line 2: not valid UTF-8" in garbage["error"]
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["a.parquet", "b.parquet", "c.parquet", "d.parquet"]  # no temp leftovers

    b = pq.read_table(out_dir / "b.parquet")
    assert b.schema == EXPECTED
    assert b.to_pylist()[1]["name"] == "fr\nank"
    assert b.column("city").to_pylist() == ["Berlin", "Rome", None]
    assert b.column("tags").null_count == 3  # column missing from the file -> null
    c = pq.read_table(out_dir / "c.parquet").to_pylist()
    assert c[0]["tags"] == '["x","y"]' and c[0]["score"] == 7.0
    assert c[1]["meta"] == '{"k":1}' and c[1]["active"] is False
    assert results["b.csv"]["bytes"] == (out_dir / "b.parquet").stat().st_size

    total = sum(pq.read_table(out_dir / n).num_rows for n in written)
    assert total == sum(rows.values()) == 10


def test_cast_rejections_against_a_given_schema(tmp_path: Path) -> None:
    src = tmp_path / "typed.csv"
    src.write_text(
        "id,amount,when\n"  # 1
        "1,10,2024-01-01\n"  # 2
        '2,"1\n2",2024-01-02\n'  # 3-4: quoted newline, not a number
        "\n"  # 5
        "x,30,2024-01-03\n"  # 6: bad id
        "4,NA,not a date\n"  # 7: NA is null, bad date
        "5,,2024-01-05\n"  # 8
    )
    schema = pa.schema([("id", pa.int64()), ("amount", pa.int64()), ("when", pa.date32())])
    res = convert_file(str(src), schema, str(tmp_path / "typed.parquet"), max_rejected=2)
    assert res["error"] is None
    assert res["rows"] == 2
    assert res["rejected_count"] == 3
    assert res["rejected"] == [  # capped at max_rejected, sorted by line
        {"line": 3, "reason": "column 'amount': cannot convert '1\\n2' to int64"},
        {"line": 6, "reason": "column 'id': cannot convert 'x' to int64"},
    ]
    table = pq.read_table(res["output"])
    assert table.column("id").to_pylist() == [1, 5]
    assert table.column("amount").to_pylist() == [10, None]

    # A file whose every row is rejected is reported as an error, with details.
    res = convert_file(
        str(src), pa.schema([("when", pa.timestamp("s", tz="UTC"))]), str(tmp_path / "x.parquet")
    )
    assert res["output"] is None and res["error"].startswith("no readable rows; line 2:")
    assert res["rejected_count"] == 5 and not (tmp_path / "x.parquet").exists()


def test_edge_cases(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header_only.csv").write_text("a,b\n")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfk,k,\n1,2,3\n")
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as fh:
        fh.write('{"n": 1}\n{"n": 12345678901234567890}\n')
    (tmp_path / "pretty.json").write_text('{\n  "a": 1,\n  "b": "two"\n}\n')

    assert infer_schema(str(tmp_path / "empty.csv")) == pa.schema([])
    assert infer_schema(str(tmp_path / "header_only.csv")).names == ["a", "b"]
    assert infer_schema(str(tmp_path / "bom.csv")).names == ["k", "k_2", "column_3"]
    assert infer_schema(str(tmp_path / "z.jsonl.gz")).field("n").type == pa.string()  # > int64
    assert infer_schema(str(tmp_path / "pretty.json")).names == ["a", "b"]

    out = convert_file(
        str(tmp_path / "header_only.csv"),
        {"fields": [{"name": "a", "type": "string"}]},
        str(tmp_path / "o") + "/",
    )
    assert out["rows"] == 0 and out["error"] is None
    assert pq.read_table(out["output"]).num_rows == 0
    out = convert_file(
        str(tmp_path / "z.jsonl.gz"),
        infer_schema(str(tmp_path / "z.jsonl.gz")),
        str(tmp_path / "o") + "/",
    )
    assert out["output"].endswith("/o/z.parquet")
    assert pq.read_table(out["output"]).column("n").to_pylist() == ["1", "12345678901234567890"]
    assert output_url("s3://b/in/x.ndjson.gz", "s3://b/out") == "s3://b/out/x.parquet"
    missing = convert_file(str(tmp_path / "nope.csv"), pa.schema([]), str(tmp_path / "o/n.parquet"))
    assert missing["error"] == "file not found"
    assert convert_file(str(tmp_path / "notes.txt"), pa.schema([]), str(tmp_path / "o/"))["error"]


def test_schema_json_round_trip() -> None:
    schema = pa.schema(
        [
            pa.field("i", pa.int64()),
            pa.field("ts", pa.timestamp("us", tz="UTC")),
            pa.field("d", pa.decimal128(12, 3)),
            pa.field("l", pa.list_(pa.int32())),
            pa.field("s", pa.string(), nullable=False),
        ]
    )
    data = schema_to_json(schema)
    assert json.loads(json.dumps(data)) == data
    assert [f["type"] for f in data["fields"][:3]] == [
        "int64",
        "timestamp[us, tz=UTC]",
        "decimal128(12, 3)",
    ]
    assert "arrow" in data["fields"][3] and "arrow" not in data["fields"][0]
    assert schema_from_json(data) == schema
    assert schema_from_json([{"name": "x", "type": "double"}]) == pa.schema([("x", pa.float64())])


def test_s3_round_trip(s3_bucket: str) -> None:
    fs = fsspec.filesystem("s3")  # endpoint and credentials come from the environment
    fs.pipe(
        {
            f"{s3_bucket}/in/a.csv": A_CSV.encode(),
            f"{s3_bucket}/in/b.csv": B_CSV.encode(),
            f"{s3_bucket}/in/deep/c.jsonl": C_JSONL.encode(),
            f"{s3_bucket}/in/garbage.csv": GARBAGE_CSV,
            f"{s3_bucket}/in/readme.md": b"# no\n",
        }
    )
    files = list_files(f"s3://{s3_bucket}/in")
    assert files == [
        f"s3://{s3_bucket}/in/{n}" for n in ["a.csv", "b.csv", "deep/c.jsonl", "garbage.csv"]
    ]
    summary = infer_files_schema(files)
    assert [Path(e["source"]).name for e in summary["errors"]] == ["garbage.csv"]
    results = [convert_file(f, summary["schema"], f"s3://{s3_bucket}/out/") for f in files]
    assert [r["rows"] for r in results] == [3, 3, 2, 0]
    assert results[1]["rejected"][0] == {"line": 3, "reason": "expected 5 fields, got 6"}
    assert results[3]["error"] and results[3]["output"] is None

    fs.invalidate_cache()
    assert sorted(fs.ls(f"{s3_bucket}/out")) == [
        f"{s3_bucket}/out/{n}.parquet" for n in ("a", "b", "c")
    ]
    with fs.open(f"{s3_bucket}/out/b.parquet", "rb") as fh:
        table = pq.read_table(fh)
    assert table.num_rows == 3
    assert table.schema == schema_from_json(summary["schema"])
    assert results[1]["bytes"] == fs.size(f"{s3_bucket}/out/b.parquet")
