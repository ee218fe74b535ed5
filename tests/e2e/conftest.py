"""Fixtures for the end-to-end tests: real ``pacsguard run`` subprocesses, cleaned up.

Every service started through ``service`` is stopped at the end of its test, and its log
is checked for the patient name that the generated files carry (no PHI in any log line).
"""

from __future__ import annotations

import os
import subprocess

import pytest

import e2e_util
from peers import Pacsguard

# This file shadows tests/conftest.py as the module ``conftest`` for the test modules in
# tests/e2e: re-export its helpers so that ``from conftest import write_ct_series`` (or
# ``bundled_images``) keeps working here.
write_ct_series = e2e_util.ROOT_CONFTEST.write_ct_series
bundled_images = e2e_util.ROOT_CONFTEST.bundled_images


@pytest.fixture
def service(tmp_path):
    """``service(config_text, workdir=None) -> Pacsguard`` (not yet started)."""
    started: list[Pacsguard] = []

    def make(config: str, workdir=None) -> Pacsguard:
        svc = Pacsguard(workdir or tmp_path / "work", config)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        if svc.proc is not None and svc.proc.poll() is None:
            try:
                svc.stop(timeout=30)
            except subprocess.TimeoutExpired:
                svc.kill()
    for svc in started:
        text = svc.log_text()
        for marker in (e2e_util.PATIENT_NAME, e2e_util.PATIENT_NAME.replace("^", " "), e2e_util.PATIENT_ID):
            assert marker not in text, f"patient data {marker!r} appears in the service log {svc.log_path}"


@pytest.fixture
def journal_plugin(monkeypatch):
    """Make the test-only ``e2e-journal`` destination plugin loadable (entry point on
    ``PYTHONPATH``) for the services and CLI calls of this test."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(e2e_util.PLUGIN_SITE) + (os.pathsep + old if old else ""))
    return e2e_util.PLUGIN_SITE


@pytest.fixture
def immutable():
    """``immutable(path)``: ``chattr +i`` a folder so that even root cannot create entries in
    it (permission bits do not stop root; the tests run as root). Undone at teardown."""
    done = []

    def set_(path, on: bool = True):
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
        if on:
            done.append(path)
        elif path in done:
            done.remove(path)

    yield set_
    for path in done:
        subprocess.run(["chattr", "-i", str(path)], check=False)
