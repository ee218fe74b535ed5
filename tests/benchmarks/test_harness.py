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
    for section in ("BURST", "STEADY RATE", "MEMORY", "STAGES", "ENCRYPTION", "CIPHER-IMAGE STATISTICS", "GOALS"):
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
    for name in ("encrypt", "decrypt"):  # with the run's key store (keys made by pacsguard keys generate)
        assert st[name]["status"] == "ok", st[name]
        assert st[name]["ct"]["ok"] == r["settings"]["stage_n"] and _positive(st[name]["ct"]["process_ms_p50"])
    assert _positive(st["decode (pydicom CPU)"]["ct"]["process_ms_p50"])


def test_encryption_figures(quick_run):
    _, r, _ = quick_run
    enc = r["encryption"]
    assert enc["recipient"] == "bench-x25519" and enc["per_slice"]
    for label, sl in enc["per_slice"].items():
        assert sl["round_trip"] == "ok" and sl["samples"] == r["settings"]["crypto_samples"], label
        for op in ("encrypt", "decrypt"):
            t = sl[op]
            assert all(_positive(t[k]) for k in ("total_ms_p50", "parse_ms_p50", "stage_ms_p50", "write_ms_p50"))
            assert t["total_ms_p90"] >= t["total_ms_p50"]
    aes = enc["aes_gcm"]
    assert aes["buffer_bytes"] == 512 * 512 * 2
    assert _positive(aes["cryptography"]["encrypt_mb_s"]) and _positive(aes["openssl"]["encrypt_mb_s"])
    assert set(enc["wrap"]) == {"rsa", "x25519", "pq-hybrid"}
    assert enc["wrap"]["rsa"]["wrapped_bytes"] == 384 and enc["wrap"]["x25519"]["wrapped_bytes"] == 80
    assert all(_positive(w["wrap_ms_p50"]) and _positive(w["unwrap_ms_p50"]) for w in enc["wrap"].values())


def test_cipher_statistics(quick_run):
    """The encrypted pixels look like uniform noise, the plain ones do not (loose bounds:
    this checks the wiring; tests/benchmarks/test_cipherstats.py checks the arithmetic)."""
    _, r, _ = quick_run
    stats = r["cipher_stats"]
    assert any(s["rows"] == s["columns"] == 512 and s["bits_allocated"] == 16 for s in stats)
    for s in stats:
        ideal, c, two = s["ideal"], s["cipher"], s["two_encryptions"]
        assert abs(two["npcr_pct"] - ideal["npcr_pct"]) < 0.1 and abs(two["uaci_pct"] - ideal["uaci_pct"]) < 0.5
        assert abs(c["entropy_bits"] - ideal["entropy_bits"]) < 0.01 < ideal["entropy_bits"] - s["plain"]["entropy_bits"]
        for d in ("horizontal", "vertical", "diagonal"):
            assert abs(c[f"correlation_{d}"]) < 0.02 and s["plain"][f"correlation_{d}"] > 0.5


def test_inference_benchmark(quick_run):
    """Micro-batched vs one at a time (tests/benchmarks/inference.py), or why it was skipped."""
    proc, r, _ = quick_run
    inf = r["inference"]
    assert inf["status"] in ("ok", "skipped"), inf
    assert "INFERENCE" in proc.stdout
    if inf["status"] == "ok":
        for level in ("stage", "pipeline"):
            assert _positive(inf[level]["one_at_a_time_images_per_s"]) and _positive(inf[level]["batched_images_per_s"])


def test_goals(quick_run):
    _, r, _ = quick_run
    goals = r["goals"]
    assert len(goals) == 6
    for g in goals:
        assert g["status"] in ("PASS", "MISS", "n/a") and g["goal"]
    # pacsguard was not selected: its goals cannot be judged
    assert [g["status"] for g in goals[:3]] == ["n/a"] * 3
    # the per-slice encryption goals are judged without any service
    assert [g["status"] in ("PASS", "MISS") and _positive(g["value"]) for g in goals[4:]] == [True, True]


def test_the_encryption_route_config_is_accepted(tmp_path):
    """The encryption contender's config, with keys from the real ``pacsguard keys
    generate`` (private keys mode 0600), passes ``pacsguard check-config``."""
    import stat

    import yaml

    from tests.benchmarks import contenders, keys
    from tests.benchmarks.common import peers

    k = keys.make_keys(tmp_path / "keys")
    for name in keys.NAMES.values():
        assert stat.S_IMODE((tmp_path / "keys" / f"{name}.key").stat().st_mode) == 0o600
    (c,) = contenders.make_contenders(["pacsguard-encrypt"], k, None)

    class Sink:
        port = 11112

    cfg = c.config(tmp_path / "svc", Sink())
    assert cfg["routes"][0]["pipeline"] == [{"encrypt": {"scope": "pixels", "recipients": ["bench-x25519"]}}]
    path = tmp_path / "pacsguard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(peers.PACSGUARD + ["check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout


def test_the_protection_route_configs_are_accepted(tmp_path):
    """deidentify + encrypt and the full protection route (deidentify, embed, encrypt)
    pass ``pacsguard check-config`` with the benchmark's keys."""
    import yaml

    from tests.benchmarks import contenders, keys
    from tests.benchmarks.common import peers

    k = keys.make_keys(tmp_path / "keys")

    class Sink:
        port = 11112

    made = contenders.make_contenders(["pacsguard-deid-encrypt", "pacsguard-full"], k, None)
    stages = []
    for c in made:
        cfg = c.config(tmp_path / c.key, Sink())
        stages.append([next(iter(step)) for step in cfg["routes"][0]["pipeline"]])
        path = tmp_path / f"{c.key}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = subprocess.run(peers.PACSGUARD + ["check-config", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr + out.stdout
    assert stages == [["deidentify", "encrypt"], ["deidentify", "embed", "encrypt"]]


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
        name = "acme-embed"
        Options = EmbedOptions
        inverse = "acme-reveal"

        def process(self, item):
            assert "deidentify" in item.results and self.options.key
            item.dataset.ImageComments = "embedded"
            calls.append(self.name)
            return item

    class Reveal(Stage):
        name = "acme-reveal"

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

    # a forward stage and its inverse, watched like embed / reveal (which are built in now)
    monkeypatch.setitem(stages.WATCHED, "acme-embed", ("deidentify",))
    monkeypatch.setitem(stages.WATCHED, "acme-reveal", ("deidentify", "acme-embed"))
    monkeypatch.setitem(stages.INVERSES, "acme-reveal", "acme-embed")
    monkeypatch.setitem(__import__("tests.benchmarks.contenders", fromlist=["x"]).STAGE_OPTION_CANDIDATES,
                        "acme-embed", [{}, {"key": "{secret}"}])
    ct = corpus.clone_series(tmp_path / "ct", 3, size=64)
    from pacsguard.daemon.keys import Key, secret_key_id

    secret = bytes(range(32))
    keys = {"secret": "bench-secret"}  # option placeholders name keys of the store
    store = {"bench-secret": Key("bench-secret", "secret", secret_key_id(secret), "test", secret=secret)}
    out = stages.run(ct, [], keys, store=store, extra_plugins=(Plugin(),))
    for name in ("deidentify", "acme-embed", "acme-reveal", "mystery-gpu-decode", "set-attributes"):
        assert out[name]["present"] and out[name]["status"] == "ok", (name, out[name])
        assert out[name]["ct"]["ok"] == 3 and _positive(out[name]["ct"]["process_ms_p50"])
    assert out["acme-embed"]["options"] == {"key": "bench-secret"}
    assert out["deidentify"]["plugin"] == "pacsguard.plugins.deidentify"
    # encrypt is built in and names a key: without a key store it is not benchmarked
    assert out["encrypt"]["present"] and out["encrypt"]["status"] == "not benchmarked"
    assert "not in the benchmark's key store" in out["encrypt"]["reason"]
    assert calls.count("acme-reveal") == 3
