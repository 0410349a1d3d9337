"""FilesConnector on real Ray against a moto S3 server: one malformed file among good ones."""

from __future__ import annotations

import json

import fsspec
import pyarrow.parquet as pq

import runtime
from connectors.files.app import FilesConnector

GOOD = {
    "in/a.csv": "id,name,score\n1,ann,1.5\n2,bob,oops\n3,cid,2\n",
    "in/2024/b.jsonl": '{"id": 4, "name": "dee", "score": 3.25, "vip": true}\n{"id": 5}\n',
    "in/2024/c.csv": "id,name\n6,eve\n7,fay\n",
}
BAD = "in/broken.jsonl"


def test_files_to_parquet_on_s3_with_a_malformed_file(ray_session, s3_bucket, file_store):
    fs = fsspec.filesystem("s3")
    for key, text in GOOD.items():
        fs.pipe(f"{s3_bucket}/{key}", text.encode())
    fs.pipe(f"{s3_bucket}/{BAD}", b"this is not json\n{\"id\": \n")

    out = runtime.run_app(
        FilesConnector,
        {"source": f"s3://{s3_bucket}/in", "destination": f"s3://{s3_bucket}/out",
         "files_per_task": 2},
        store=file_store,
    )

    assert out.files == 4 and out.converted == 3
    assert [(m.source, m.error.split(";")[0]) for m in out.malformed] == [
        (f"s3://{s3_bucket}/{BAD}", "no readable rows")
    ]
    assert "invalid JSON" in out.malformed[0].error
    # One unified schema: score is a string in one file (a bad cell), vip only in another.
    assert {f.name for f in out.schema_fields} == {"id", "name", "score", "vip"}
    fs.invalidate_cache()
    written = sorted(fs.find(f"{s3_bucket}/out/data"))
    assert written == sorted(f"{s3_bucket}/out/data/{k[3:]}.parquet" for k in GOOD)
    ids = []
    for path in written:
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        assert table.column_names == ["id", "name", "score", "vip"]
        ids += table.column("id").to_pylist()
    assert sorted(ids) == [1, 2, 3, 4, 5, 6, 7]
    report = json.loads(fs.cat(out.report.removeprefix("s3://")))
    assert report["malformed"] == [{"source": f"s3://{s3_bucket}/{BAD}",
                                    "error": out.malformed[0].error}]
