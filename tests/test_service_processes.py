"""`serve` with evaluation processes: none outlives the service, however it ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .process_helpers import children_of, wait_gone

CLI = str(Path(sys.executable).parent / "fasciculation-cds")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    port = _free_port()
    config = tmp_path / "service.json"
    config.write_text(json.dumps({
        "public_base_url": f"http://127.0.0.1:{port}", "evaluation_processes": 2,
        "feedback_database_url": f"sqlite:///{tmp_path / 'feedback.db'}",
        "log_level": "warning"}))
    process = subprocess.Popen([CLI, "serve", "--port", str(port), "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("serve did not start")
    workers = children_of(process.pid)  # started before /healthz answers (warm-up)
    assert len(workers) >= 2, workers
    return process, workers


@pytest.mark.cli
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_no_evaluation_process_outlives_serve(tmp_path: Path, how: signal.Signals) -> None:
    process, workers = _serve(tmp_path)
    os.kill(process.pid, how)
    process.wait(timeout=30)
    assert wait_gone(workers) == []
