"""The allocator thresholds: set once on glibc, left alone when the administrator chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from pacsguard.daemon.memory import tune_allocator; print(tune_allocator(), tune_allocator())"


def _run(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                          check=True, timeout=60).stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_set_once_on_glibc():
    assert _run({}) == "True True"


def test_environment_wins():
    assert _run({"MALLOC_TRIM_THRESHOLD_": "131072"}) == "False False"
