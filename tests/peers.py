"""Real processes for end-to-end tests: the pacsguard service, dcmtk peers and Orthanc.

Import as ``from peers import ...`` (``tests/`` is on ``sys.path``). Nothing here mocks
anything: each class starts the real program on loopback, on free ports, in a temp folder.
A missing peer program is a test failure (the set-up script installs them), never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

PACSGUARD = [sys.executable, "-m", "pacsguard.daemon.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_env(**extra: str) -> dict:
    """Environment for dcmtk tools: TCP_NODELAY=1 or they stall on delayed ACKs."""
    env = dict(os.environ, TCP_NODELAY="1")
    env.update(extra)
    return env


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} is not installed: run scripts/setup.sh (it installs the test peers)")
    return path


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- pacsguard ---------------------------------------------------------------------------


class Pacsguard:
    """``pacsguard run --config FILE`` as a subprocess, with its log in ``workdir``."""

    def __init__(self, workdir: Path, config: str):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "pacsguard.yaml"
        self.config_path.write_text(config)
        self.log_path = self.workdir / "pacsguard.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._starts = 0

    def start(self, timeout: float = 30.0) -> "Pacsguard":
        self._log = open(self.log_path, "a")
        self._starts += 1
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(PACSGUARD + ["run", "--config", str(self.config_path)],
                                     cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._started, timeout, "pacsguard to start")
        return self

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"pacsguard exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self.log_text().count('"pacsguard started"') >= self._starts

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(PACSGUARD + list(args) + ["--config", str(self.config_path)],
                             cwd=self.workdir, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"pacsguard {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._close_log()

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "Pacsguard":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


# --- dcmtk ---------------------------------------------------------------------------------


class Storescp:
    """dcmtk ``storescp`` storing every object it receives under ``folder`` (one file each,
    named after the SOP Instance UID)."""

    def __init__(self, folder: Path, *, aet: str = "STORESCP", port: int | None = None,
                 args: tuple[str, ...] = ("+xa",)):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = port or free_port()
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.log_path = self.folder.parent / f"storescp-{self.port}.log"

    def start(self) -> "Storescp":
        cmd = [require("storescp"), "--aetitle", self.aet, "--output-directory", str(self.folder),
               "--promiscuous", "-uf", "+B", *self.args, str(self.port)]
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=tool_env())
        wait_for(lambda: _listening(self.port) or self._died(), 15, f"storescp on port {self.port}")
        return self

    def _died(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"storescp exited: {self.log_path.read_text()}")
        return False

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "Storescp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def storescu(port: int, files, *, called: str = "PACSGUARD", calling: str = "STORESCU",
             host: str = "127.0.0.1", args: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    """dcmtk ``storescu``: send ``files`` on one association; returns the finished process."""
    cmd = [require("storescu"), "-aec", called, "-aet", calling, *args, host, str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=tool_env())


def echoscu(port: int, *, called: str = "PACSGUARD", calling: str = "ECHOSCU", host: str = "127.0.0.1",
            args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [require("echoscu"), "-aec", called, "-aet", calling, *args, host, str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=tool_env())


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- Orthanc -------------------------------------------------------------------------------


class Orthanc:
    """A real Orthanc PACS (the Debian package) with its own storage in ``workdir``.

    ``modalities`` are remote nodes Orthanc may send to ({name: [AET, host, port]});
    ``lua`` is an optional Lua script (e.g. an ``OnStoredInstance`` auto-router).
    """

    def __init__(self, workdir: Path, *, aet: str = "ORTHANC", modalities: dict | None = None,
                 lua: str | None = None, extra: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        cfg = {
            "Name": "pacsguard-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": modalities or {},
            "Plugins": [],
            "StableAge": 1,
            "HttpServerEnabled": True,
        }
        if lua:
            script = self.workdir / "route.lua"
            script.write_text(lua)
            cfg["LuaScripts"] = [str(script)]
        cfg.update(extra or {})
        self.config_path = self.workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(cfg, indent=2))
        self.log_path = self.workdir / "orthanc.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "Orthanc":
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen([require("Orthanc"), str(self.config_path)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=tool_env(), cwd=self.workdir)
        wait_for(self._ready, 60, "Orthanc to start", interval=0.2)
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: {self.log_path.read_text()[-3000:]}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            body = resp.read()
            return json.loads(body) if resp.headers.get_content_type() == "application/json" else body

    def post(self, path: str, body: bytes, content_type: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=body, method="POST",
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
            return json.loads(data) if resp.headers.get_content_type() == "application/json" else data

    def instances(self) -> list[str]:
        return self.get("/instances")

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file")

    def sop_instance_uids(self) -> set[str]:
        return {self.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in self.instances()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def configure_pynetdicom() -> None:
    """pynetdicom as a test peer (requestor): send files as they are, never log identifiers."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
