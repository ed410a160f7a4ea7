"""Batch integrity under faults: no row says `ok` on data that was lost, no worker outlives the
run, every failure ends with one message and its own exit code, never a complete-looking
half output."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fasciculation_cds.batch import BatchOptions, run_batch
from fasciculation_cds.batch import outputs as batch_outputs
from fasciculation_cds.batch import run as batch_run
from fasciculation_cds.batch.options import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OUTPUT_FAILED,
    EXIT_TERMINATED,
    EXIT_UNREADABLE_INPUT,
    OutputError,
)
from fasciculation_cds.cli import app

from .conftest import REPO, shared_data
from .process_helpers import children_of, wait_gone

AS_OF = "2026-11-26"
CLI = str(Path(sys.executable).parent / "fasciculation-cds")
MAKE_POPULATION = REPO / "bench" / "population.py"


def _export(tmp_path: Path, gz: bool = False) -> Path:
    data = tmp_path / "in"
    shutil.copytree(shared_data("ndjson", "pathling-9-patients"), data)
    if gz:
        for path in list(data.glob("*.ndjson")):
            (data / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    return data


def _rows(out: Path) -> list[dict[str, Any]]:
    return sorted(pq.read_table(out / "assessments.parquet").to_pylist(),
                  key=lambda r: str(r["patient"]))


def _run(inputs: list[Path], out: Path, **kwargs: Any) -> list[dict[str, Any]]:
    run_batch(BatchOptions(inputs=inputs, out=out, as_of=AS_OF, assume_presentation=True,
                           **kwargs))
    return _rows(out)


def _assert_all_partial(rows: list[dict[str, Any]], named: str) -> None:
    assert rows
    for row in rows:
        assert row["status"] in ("partial", "error"), row
        if row["status"] == "partial":
            assert named in str(row["error"])
            assert "any patient's data could have been in what was not read" in str(row["error"])


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_member_makes_every_row_partial(tmp_path: Path, damage: str) -> None:
    data = _export(tmp_path, gz=True)
    clean = _run([data], tmp_path / "clean", workers=1)
    assert all(r["status"] == "ok" for r in clean)
    target = data / "Observation.ndjson.gz"
    raw = bytearray(target.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        middle = len(raw) // 2
        raw[middle:middle + 64] = bytes(64)
    target.write_bytes(bytes(raw))
    rows = _run([data], tmp_path / "out", workers=2)
    assert [r["patient"] for r in rows] == [r["patient"] for r in clean]  # one row each
    _assert_all_partial(rows, "Observation.ndjson.gz: ")
    problems = (tmp_path / "out" / "problems.ndjson").read_text()
    # garbled deflate data may decode into broken lines before the checksum fails at the end
    assert "Observation.ndjson.gz: cannot read" in problems
    findings = pq.read_table(tmp_path / "out" / "findings.parquet").to_pylist()
    assert all(f["status"] == "partial" for f in findings)
    run = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    assert run["counts"]["ok"] == 0
    assert run["counts"]["partial"] == len(rows)


def test_undecodable_line_in_a_read_type_makes_rows_partial(tmp_path: Path) -> None:
    data = _export(tmp_path)
    with (data / "Condition.ndjson").open("ab") as handle:
        handle.write(b'{"resourceType": "Condition", "subject": {"reference": "Pati\n')
    rows = _run([data], tmp_path / "out", workers=1)
    assert len(rows) == 9
    _assert_all_partial(rows, "Condition.ndjson: line")


def test_unreadable_files_make_rows_partial(tmp_path: Path) -> None:
    """As root, chmod 000 does not stop a read: a dangling link and a folder with a data
    file's name are files that cannot be read."""
    data = _export(tmp_path)
    (data / "MedicationRequest.ndjson").symlink_to(tmp_path / "gone.ndjson")
    (data / "Condition.001.ndjson").mkdir()
    rows = _run([data], tmp_path / "out", workers=2)
    assert len(rows) == 9
    _assert_all_partial(rows, "cannot read")
    problems = (tmp_path / "out" / "problems.ndjson").read_text()
    assert "MedicationRequest.ndjson: cannot read" in problems
    assert "Condition.001.ndjson: cannot read" in problems


def test_injected_read_error_makes_rows_partial(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = _export(tmp_path)
    real_open = Path.open

    def failing_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "Observation.ndjson":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)
    rows = _run([data], tmp_path / "out", workers=1)
    _assert_all_partial(rows, "Observation.ndjson: cannot read: [Errno 13] Permission denied")


def test_a_file_of_a_type_no_rule_reads_is_not_read(tmp_path: Path) -> None:
    data = _export(tmp_path)
    (data / "Claim.000.ndjson").write_bytes(b"{not json at all\n")
    rows = _run([data], tmp_path / "out", workers=1)
    assert all(r["status"] == "ok" for r in rows)
    run = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    claim = next(i for i in run["inputs"] if i["path"].endswith("Claim.000.ndjson"))
    assert claim == {**claim, "type": "Claim", "read": False, "sha256": None}
    # with --as-of auto every resource's time counts, so the file is read: the line is lost
    run_batch(BatchOptions(inputs=[data], out=tmp_path / "auto", as_of="auto", workers=1))
    _assert_all_partial(_rows(tmp_path / "auto"), "Claim.000.ndjson: line 1")


def test_full_disk_fails_cleanly_and_leaves_no_complete_looking_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _export(tmp_path)
    out = tmp_path / "out"
    _run([data], out, workers=1)
    assert (out / "run.json").exists()

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)  # as a shard's part is written
    with pytest.raises(OutputError, match="No space left on device"):
        _run([data], out, workers=1)
    left = sorted(p.name for p in out.iterdir())
    assert left == ["_work"]  # the earlier run's outputs are gone, and nothing new looks done
    assert not list(out.rglob("*.tmp-*"))


def test_failure_while_outputs_are_moved_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _export(tmp_path)
    out = tmp_path / "out"
    real = batch_outputs.publish

    def half(staging: Path, target: Path, output_format: str) -> Any:
        (staging / "assessments.parquet").replace(target / "assessments.parquet")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch_run, "publish", half)
    with pytest.raises(OutputError):
        _run([data], out, workers=1)
    assert not (out / "run.json").exists()  # run.json is what says the outputs are complete
    monkeypatch.setattr(batch_run, "publish", real)
    _run([data], out, workers=1)
    assert (out / "run.json").exists()


def test_cli_exit_codes_and_single_messages(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    data = _export(tmp_path)
    base = ["batch", "--out", str(tmp_path / "o"), "--as-of", AS_OF, "--workers", "1"]
    missing = runner.invoke(app, [*base, str(tmp_path / "nowhere")])
    assert missing.exit_code == EXIT_UNREADABLE_INPUT
    assert "no such file or folder" in missing.output
    monkeypatch.setattr("fasciculation_cds.batch.run.importlib.util.find_spec",
                        lambda name, *a: None if name == "pyspark" else object())
    spark = runner.invoke(app, [*base, str(data), "--engine", "spark"])
    assert spark.exit_code == EXIT_MISSING_DEPENDENCY
    assert "pip install 'fasciculation-cds[spark]'" in spark.output
    monkeypatch.undo()

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)  # as a shard's part is written
    disk = runner.invoke(app, [*base, str(data)])
    assert disk.exit_code == EXIT_OUTPUT_FAILED
    assert "No space left on device" in disk.output
    for result in (missing, spark, disk):
        assert "Traceback" not in result.output
        assert result.output.count("error:") == 1


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 96 KiB tmpfs: a real full disk (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.cli
def test_real_full_disk(tmp_path: Path, tiny_disk: Path) -> None:
    data = _export(tmp_path)
    done = subprocess.run([CLI, "batch", str(data), "--out", str(tiny_disk / "out"),
                           "--as-of", AS_OF, "--workers", "2", "--assume-presentation"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_OUTPUT_FAILED, done.stderr
    assert "No space left on device" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tiny_disk / "out" / "run.json").exists()


# --- signals and orphans ------------------------------------------------------------------


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that a run with two workers lasts a few seconds."""
    out = tmp_path_factory.mktemp("pop") / "pop"
    subprocess.run([sys.executable, str(MAKE_POPULATION), "--patients", "1000", "--seed", "3",
                    "--format", "ndjson", "--gzip", "--out", str(out)], check=True,
                   capture_output=True)
    return out


def _start(population: Path, out: Path) -> tuple[subprocess.Popen[str], list[int]]:
    process = subprocess.Popen([CLI, "batch", str(population), "--out", str(out), "--as-of",
                                AS_OF, "--workers", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    children = children_of(process.pid)
    while time.monotonic() < deadline and len(children) < 2 and process.poll() is None:
        time.sleep(0.02)
        children = children_of(process.pid)
    assert len(children) >= 2, "the workers did not start"
    time.sleep(0.3)  # the workers are busy now
    assert process.poll() is None, "the run ended before it could be interrupted"
    return process, children


@pytest.mark.cli
def test_kill_9_leaves_no_worker_running(tmp_path: Path, population: Path) -> None:
    process, children = _start(population, tmp_path / "out")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert wait_gone(children) == []


@pytest.mark.cli
@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, EXIT_INTERRUPTED),
                                                      (signal.SIGTERM, EXIT_TERMINATED)])
def test_signals_stop_cleanly_and_resume_is_exact(tmp_path: Path, population: Path,
                                                  signal_number: int, code: int) -> None:
    out = tmp_path / "out"
    process, children = _start(population, out)
    if signal_number == signal.SIGINT:
        os.killpg(process.pid, signal_number)  # as a terminal's Ctrl-C: the whole group
    else:
        os.kill(process.pid, signal_number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stderr
    assert wait_gone(children) == []
    assert not (out / "run.json").exists()
    resumed = subprocess.run([CLI, "batch", str(population), "--out", str(out), "--as-of",
                              AS_OF, "--workers", "2", "--resume"], capture_output=True,
                             text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    whole = tmp_path / "whole"
    subprocess.run([CLI, "batch", str(population), "--out", str(whole), "--as-of", AS_OF,
                    "--workers", "1"], capture_output=True, check=True)
    for table in ("assessments.parquet", "findings.parquet"):
        assert (out / table).read_bytes() == (whole / table).read_bytes()


def test_exit_code_for_partial_rows(tmp_path: Path) -> None:
    data = _export(tmp_path)
    (data / "Observation.ndjson").write_bytes(
        (data / "Observation.ndjson").read_bytes() + b"{broken\n")
    result = CliRunner().invoke(app, ["batch", str(data), "--out", str(tmp_path / "o"),
                                      "--as-of", AS_OF, "--workers", "1"])
    assert result.exit_code == EXIT_INCOMPLETE
    assert "9 rows are partial" in result.output
