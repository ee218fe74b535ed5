"""Smoke test of the benchmark harness: ``--quick`` against the dcmtk limit and Orthanc.

It checks that the harness runs end to end and writes a well-formed report with sane
positive numbers; it asserts no speed goal (those are for the lead's full runs).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(240)]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    cmd = [sys.executable, "-m", "tests.benchmarks", "--quick", "--contenders", "dcmtk-limit,orthanc",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, f"harness failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads((out / "latest.json").read_text())
    return proc, report, out


def test_report_files_and_table(quick_run):
    proc, report, out = quick_run
    assert Path(report["files"]["json"]).is_file()
    assert Path(report["files"]["table"]).is_file()
    for section in ("BURST", "STEADY RATE", "MEMORY", "STAGES", "GOALS"):
        assert section in proc.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    png = Path(report["files"]["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_header(quick_run):
    _, r, _ = quick_run
    assert r["schema"] == 1
    assert r["machine"]["nproc"] >= 1 and r["machine"]["cpu_model"] and r["machine"]["memory_bytes"] > 0
    for k in ("pacsguard", "dcmtk", "orthanc", "python"):
        assert r["versions"][k], k
    assert r["settings"]["quick"] is True
    assert r["settings"]["sink"]["max_pdu"] > 0
    c = r["corpus"]
    assert c["ct_series"]["images"] == r["settings"]["n"] and c["pydicom_bundled"]["images"] > 10
    assert c["files"] == c["ct_series"]["images"] + c["pydicom_bundled"]["images"] and c["bytes"] > 0


@pytest.mark.parametrize("key", ["dcmtk-limit", "orthanc"])
def test_contender_figures(quick_run, key):
    _, r, _ = quick_run
    e = r["contenders"][key]
    files = r["corpus"]["files"]
    burst = e["burst"]
    assert burst["status"] == "ok", burst.get("error")
    m = burst["median"]
    assert m["images_delivered"] == files
    for k in ("images_per_s", "mb_per_s", "duration_s"):
        assert _positive(m[k]), (k, m[k])
    assert m["ack_to_delivery_p99_s"] >= m["ack_to_delivery_p50_s"] - 0.01
    assert abs(m["ack_to_delivery_p99_s"]) < 60
    assert _positive(e["ratios"]["burst_vs_limit"])
    rate = e["rate"]
    assert rate["status"] == "ok", rate.get("error")
    rm = rate["median"]
    assert rm["images_delivered"] == r["settings"]["rate_n"]
    assert _positive(rm["achieved_send_rate"]) and rm["achieved_send_rate"] <= r["settings"]["rate"] * 1.2
    assert rm["ack_to_delivery_p99_s"] is not None and abs(rm["ack_to_delivery_p99_s"]) < 60
    if key == "orthanc":  # a service: its process tree was measured
        for k in ("cpu_s_per_image", "peak_rss_mb"):
            assert _positive(m[k]) and _positive(rm[k]), k
        assert m["peak_rss_mb"] < 4000
        assert e["ratios"]["burst_vs_orthanc"] == 1.0
    else:
        assert m.get("peak_rss_mb") is None and m.get("cpu_s_per_image") is None


def test_memory_burst(quick_run):
    _, r, _ = quick_run
    mem = r["memory"]
    assert mem["contender"] == "orthanc"  # pacsguard not selected: the service contender stands in
    assert mem["status"] == "ok", mem.get("error")
    assert mem["median"]["images_delivered"] == mem["images"] == r["settings"]["memory_n"]
    assert _positive(mem["median"]["peak_rss_mb"])
    assert len(mem["timeline"]) >= 2 and all(_positive(rss) for _, rss in mem["timeline"])


def test_stages(quick_run):
    _, r, _ = quick_run
    st = r["stages"]
    sa = st["set-attributes"]
    assert sa["present"] and sa["status"] == "ok"
    assert _positive(sa["ct"]["process_ms_p50"]) and sa["ct"]["ok"] == r["settings"]["stage_n"]
    for name in ("deidentify", "embed", "reveal", "encrypt", "decrypt"):
        assert name in st and isinstance(st[name]["present"], bool)
    assert _positive(st["decode (pydicom CPU)"]["ct"]["process_ms_p50"])


def test_goals(quick_run):
    _, r, _ = quick_run
    goals = r["goals"]
    assert len(goals) == 4
    for g in goals:
        assert g["status"] in ("PASS", "MISS", "n/a") and g["goal"]
    # pacsguard was not selected: its goals cannot be judged
    assert [g["status"] for g in goals[:3]] == ["n/a"] * 3


def test_stage_benchmarks_pick_up_new_stages_by_name(tmp_path, monkeypatch):
    """A plugin that provides embed / reveal is timed as soon as it is loaded: reveal on
    embed's output, embed after deidentify (built in, keyed with the secret key file); a
    stage nobody knows is timed too."""
    monkeypatch.syspath_prepend(str(REPO))
    from pacsguard.daemon.extension import Options, Stage
    from pacsguard.daemon.hookspecs import hookimpl
    from tests.benchmarks import corpus, stages

    calls = []

    class EmbedOptions(Options):
        key: str

    class Embed(Stage):
        name = "embed"
        Options = EmbedOptions
        inverse = "reveal"

        def process(self, item):
            assert "deidentify" in item.results and self.options.key
            item.dataset.ImageComments = "embedded"
            calls.append(self.name)
            return item

    class Reveal(Stage):
        name = "reveal"

        def process(self, item):
            assert item.dataset.ImageComments == "embedded"  # read back from embed's output file
            calls.append(self.name)
            return item

    class Mystery(Stage):
        name = "mystery-gpu-decode"

        def process(self, item):
            item.pixels()
            calls.append(self.name)
            return item

    class Plugin:
        @hookimpl
        def pacsguard_register_stages(self, register):
            for cls in (Embed, Reveal, Mystery):
                register(cls)

    ct = corpus.clone_series(tmp_path / "ct", 3, size=64)
    keys = {"secret": tmp_path / "secret.key"}
    keys["secret"].write_bytes(bytes(range(32)))
    out = stages.run(ct, [], keys, extra_plugins=(Plugin(),))
    for name in ("deidentify", "embed", "reveal", "mystery-gpu-decode", "set-attributes"):
        assert out[name]["present"] and out[name]["status"] == "ok", (name, out[name])
        assert out[name]["ct"]["ok"] == 3 and _positive(out[name]["ct"]["process_ms_p50"])
    assert out["embed"]["options"] == {"key": str(keys["secret"])}
    assert out["deidentify"]["plugin"] == "pacsguard.plugins.deidentify"
    # encrypt is built in; the harness's option guesses name key files, not key store names
    assert out["encrypt"]["present"] and out["encrypt"]["status"] == "not benchmarked"
    assert calls.count("reveal") == 3
