"""Batch on object storage: an S3 emulator (moto's server, on loopback, in this process) holds
the export and receives the outputs. The same export on s3:// and on disk gives the same rows,
byte for byte; a damaged or missing object, refused credentials and an interrupted run behave
as on disk, with the same exit codes, and no secret is printed."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fasciculation_cds.batch import BatchOptions, run_batch, storage
from fasciculation_cds.batch import run as batch_run
from fasciculation_cds.batch.options import (
    EXIT_INCOMPLETE,
    EXIT_OUTPUT_FAILED,
    EXIT_UNREADABLE_INPUT,
    StorageOptions,
)
from fasciculation_cds.cli import app

from .conftest import REPO

pytest.importorskip("s3fs")
pytest.importorskip("moto")

AS_OF = "2026-11-26"
WRONG_KEY_ID = "AKIAWRONGKEYID000000"
WRONG_SECRET = "wrong/secret+value/that-must-never-be-printed"


def _load_population() -> Any:
    spec = importlib.util.spec_from_file_location("population", REPO / "bench" / "population.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's cache, where the working folder of an object-storage --out goes by
    default."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bucket(endpoint: str) -> str:
    import boto3

    name = f"export-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gzipped Bulk Data export of 20 generated patients, with its manifest."""
    folder = tmp_path_factory.mktemp("export")
    _load_population().write_population(20, folder, fmt="ndjson", gz=True)
    return folder


def _upload(endpoint: str, bucket: str, folder: Path, prefix: str = "export") -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(folder.iterdir()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    import boto3

    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket,
                                                                        Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _object(endpoint: str, bucket: str, key: str) -> bytes:
    import boto3

    body = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key=key)["Body"]
    data: bytes = body.read()
    return data


def _options(inputs: list[str | Path], out: str | Path, endpoint: str,
             **kwargs: Any) -> BatchOptions:
    return BatchOptions(inputs=inputs, out=out, as_of=AS_OF, assume_presentation=True,
                        storage=StorageOptions(endpoint_url=endpoint), **kwargs)


def _lines(rows: Iterator[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(row, option=orjson.OPT_SORT_KEYS) for row in rows]


def _local_rows(out: Path, table: str) -> list[bytes]:
    return _lines(iter(pq.read_table(out / f"{table}.parquet").to_pylist()))


def _remote_rows(out: str, table: str) -> list[bytes]:
    return _lines(storage.iter_remote_rows(f"{out}/{table}.parquet", "parquet"))


def _cli(endpoint: str, *words: str) -> Any:
    return CliRunner().invoke(app, ["batch", *words, "--as-of", AS_OF, "--assume-presentation",
                                    "--storage-endpoint", endpoint])


def test_local_engine_gives_the_same_bytes_from_s3_as_from_disk(
        endpoint: str, bucket: str, export: Path, tmp_path: Path) -> None:
    source = _upload(endpoint, bucket, export)
    disk = run_batch(_options([export], tmp_path / "disk", endpoint, workers=2))
    remote = run_batch(_options([source], f"s3://{bucket}/out", endpoint, workers=2,
                                scratch=tmp_path / "scratch"))
    assert disk.patients == remote.patients == 20
    assert not remote.problems
    for name in ("assessments.parquet", "findings.parquet", "problems.ndjson",
                 "unrecognized.parquet"):
        assert _object(endpoint, bucket, f"out/{name}") == (tmp_path / "disk" / name).read_bytes()
    assert _keys(endpoint, bucket, "out/") == [
        "out/assessments.parquet", "out/findings.parquet", "out/problems.ndjson", "out/run.json",
        "out/unrecognized.parquet"]
    report = orjson.loads(_object(endpoint, bucket, "out/run.json"))
    assert report["outputs"]["assessments"] == f"s3://{bucket}/out/assessments.parquet"
    assert all(entry["path"].startswith(f"s3://{bucket}/export/") for entry in report["inputs"])
    assert all(entry["sha256"] for entry in report["inputs"] if entry["read"])
    assert report["storage"] == {"endpoint_url": endpoint}
    assert "testing" not in _object(endpoint, bucket, "out/run.json").decode()
    assert not (tmp_path / "scratch" / "_work").exists()  # finished: the scratch is cleaned


def test_manifest_on_s3_is_read_like_a_local_one(endpoint: str, bucket: str, export: Path,
                                                  tmp_path: Path) -> None:
    """The output[].url of a manifest names the server that exported it (found beside the
    manifest by its name) or the object itself; the declared types decide what is read."""
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    manifest = orjson.loads((copy / "manifest.json").read_bytes())
    for index, item in enumerate(manifest["output"]):
        item["url"] = (f"s3://{bucket}/export/{item['url']}" if index == 0 else
                       f"https://fhir.example.org/bulk/{item['url']}")
    (copy / "manifest.json").write_bytes(orjson.dumps(manifest))
    (copy / "Stray.ndjson.gz").write_bytes(gzip.compress(b"not json\n"))  # not listed
    _upload(endpoint, bucket, copy)
    on_disk = run_batch(_options([export / "manifest.json"], tmp_path / "disk", endpoint,
                                 workers=1))
    summary = run_batch(_options([f"s3://{bucket}/export/manifest.json"], tmp_path / "out",
                                 endpoint, workers=1))
    assert summary.patients == on_disk.patients == 20
    assert not summary.problems
    assert [e["type"] for e in summary.inputs] == [e["type"] for e in on_disk.inputs]
    assert [e["read"] for e in summary.inputs] == [e["read"] for e in on_disk.inputs]
    assert _local_rows(tmp_path / "out", "assessments") == \
        _local_rows(tmp_path / "disk", "assessments")


def test_damaged_object_gives_partial_rows_and_a_problem(endpoint: str, bucket: str,
                                                         export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    target = next(copy.glob("Observation.*.ndjson.gz"))
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    source = _upload(endpoint, bucket, copy)
    result = _cli(endpoint, source, "--out", f"s3://{bucket}/out", "--workers", "1",
                  "--scratch", str(tmp_path / "scratch"))
    assert result.exit_code == EXIT_INCOMPLETE, result.output
    rows = [orjson.loads(r) for r in _remote_rows(f"s3://{bucket}/out", "assessments")]
    assert len(rows) == 20  # nothing dropped
    assert {r["status"] for r in rows} == {"partial"}
    problems = _object(endpoint, bucket, "out/problems.ndjson").decode()
    assert f"s3://{bucket}/export/{target.name}: cannot read: the file ends early" in problems
    assert "run.json" in " ".join(_keys(endpoint, bucket, "out/"))


def test_missing_object_is_refused_before_any_work(endpoint: str, bucket: str, export: Path,
                                                   tmp_path: Path, cache: Path) -> None:
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    gone = next(copy.glob("Condition.*.ndjson.gz"))
    gone.unlink()  # the manifest still lists it
    _upload(endpoint, bucket, copy)
    result = _cli(endpoint, f"s3://{bucket}/export/manifest.json", "--out",
                  f"s3://{bucket}/out")
    assert result.exit_code == EXIT_UNREADABLE_INPUT, result.output
    assert f"manifest file not found: {gone.name}" in result.output
    nowhere = _cli(endpoint, f"s3://{bucket}/no-such-export", "--out", f"s3://{bucket}/out")
    assert nowhere.exit_code == EXIT_UNREADABLE_INPUT
    assert f"s3://{bucket}/no-such-export: no such file or folder" in nowhere.output
    assert _keys(endpoint, bucket, "out/") == []
    assert not (cache / "fasciculation-cds").exists()  # no working folder was made


@pytest.fixture
def refusing(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator (in this process) checks credentials: it knows none, so these are
    refused."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRONG_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)


def test_refused_credentials_give_a_clear_error_and_no_secret(
        endpoint: str, bucket: str, export: Path, tmp_path: Path, refusing: None) -> None:
    reading = _cli(endpoint, f"s3://{bucket}/export", "--out", str(tmp_path / "out"))
    assert reading.exit_code == EXIT_UNREADABLE_INPUT, reading.output
    assert f"s3://{bucket}/export: access denied: the credentials were refused" in reading.output
    writing = _cli(endpoint, str(export), "--out", f"s3://{bucket}/out",
                   "--scratch", str(tmp_path / "scratch"))
    assert writing.exit_code == EXIT_OUTPUT_FAILED, writing.output
    assert f"s3://{bucket}/out: access denied" in writing.output
    for result in (reading, writing):
        assert "Traceback" not in result.output
        assert WRONG_SECRET not in result.output
        assert WRONG_KEY_ID not in result.output
    assert not (tmp_path / "out" / "run.json").exists()


def test_credentials_are_never_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(storage.ENVIRONMENT, '{"secret": "x", "region": "eu-west-1"}')
    result = CliRunner().invoke(app, ["batch", str(tmp_path), "--out", "s3://b/out"])
    assert result.exit_code == 2
    assert "unknown option 'secret': credentials come only from the cloud's own chain" in \
        result.output
    monkeypatch.setenv(storage.ENVIRONMENT, '{"region": "eu-west-1", "sse": "aws:kms"}')
    assert storage.storage_options(kms_key_id="alias/batch") == StorageOptions(
        region="eu-west-1", sse="aws:kms", kms_key_id="alias/batch")
    assert storage.storage_options(region="us-east-2").region == "us-east-2"  # a flag wins


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.import_module

    def without_adlfs(name: str, *args: Any) -> Any:
        if name == "adlfs":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(storage.importlib, "import_module", without_adlfs)
    result = CliRunner().invoke(app, ["batch", "abfss://container@account.dfs.core.windows.net/x",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 5, result.output
    assert "abfss:// needs adlfs: pip install 'fasciculation-cds[azure]'" in result.output


def test_uris_and_paths_are_told_apart() -> None:
    assert storage.location(Path("s3://bucket/export")) == "s3://bucket/export"
    assert storage.location("file:///data/export") == "/data/export"
    assert storage.location("hdfs://namenode:8020/x") == "hdfs://namenode:8020/x"
    assert storage.location("relative/s3:/x") == "relative/s3:/x"
    with pytest.raises(Exception, match="ftp:// is not supported"):
        storage.location("ftp://host/export")


def test_resume_after_an_interrupted_run_to_s3(endpoint: str, bucket: str, export: Path,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    source = _upload(endpoint, bucket, export)
    whole = tmp_path / "whole"
    run_batch(_options([source], whole, endpoint, workers=1, shards=6))
    real = batch_run.run_shard
    calls = {"n": 0}

    def interrupted(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    out, scratch = f"s3://{bucket}/out", tmp_path / "scratch"
    monkeypatch.setattr(batch_run, "run_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(_options([source], out, endpoint, workers=1, shards=6, scratch=scratch))
    assert _keys(endpoint, bucket, "out/") == []  # nothing published, no run.json
    assert len(list((scratch / "_work" / "parts").glob("assessments-*"))) == 2
    monkeypatch.setattr(batch_run, "run_shard", real)
    resumed = run_batch(_options([source], out, endpoint, workers=1, shards=6,
                                 scratch=scratch, resume=True))
    assert resumed.patients == 20
    assert _object(endpoint, bucket, "out/assessments.parquet") == \
        (whole / "assessments.parquet").read_bytes()
    assert "out/run.json" in _keys(endpoint, bucket, "out/")


@pytest.mark.spark
def test_spark_reads_and_writes_s3_with_the_local_engines_rows(
        endpoint: str, bucket: str, export: Path, tmp_path: Path, cache: Path) -> None:
    pytest.importorskip("pyspark")
    source = _upload(endpoint, bucket, export)
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    damaged = next(copy.glob("Observation.*.ndjson.gz"))
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    broken = _upload(endpoint, bucket, copy, prefix="damaged")
    run_batch(_options([export], tmp_path / "local", endpoint, workers=2))
    # a problem names its object: the damaged export's rows are those of the local engine on
    # the same objects
    run_batch(_options([broken], tmp_path / "local-damaged", endpoint, workers=2))
    for inputs, out, local in ((source, "spark", "local"),
                               (broken, "spark-damaged", "local-damaged")):
        summary = run_batch(_options([inputs], f"s3://{bucket}/{out}", endpoint, workers=2,
                                     engine="spark"))
        assert summary.patients == 20
        for table in ("assessments", "findings"):
            assert _remote_rows(f"s3://{bucket}/{out}", table) == \
                _local_rows(tmp_path / local, table)
        keys = _keys(endpoint, bucket, f"{out}/")
        assert f"{out}/run.json" in keys
        assert not [k for k in keys if "/_work" in k]
    assert not list((cache / "fasciculation-cds" / "batch").iterdir())  # done: cleaned
    problems = _object(endpoint, bucket, "spark-damaged/problems.ndjson").decode()
    assert f"s3://{bucket}/damaged/{damaged.name}: cannot read" in problems
