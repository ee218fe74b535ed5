"""Prometheus metrics and /healthz of a running service (metrics on a free port: port 0,
read back from the "pacsguard started" log line)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from e2e_util import PATIENT_ID, PATIENT_NAME, folder_config, make_image, visible_files
from peers import wait_for

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


def test_metrics_and_healthz(tmp_path, service, immutable):
    down = tmp_path / "down"
    down.mkdir()
    cfg = folder_config(
        tmp_path,
        destinations={
            "ok": {"type": "folder", "path": str(tmp_path / "ok"), "template": "{SOPInstanceUID}.dcm"},
            "down": {"type": "folder", "path": str(down), "template": "{SOPInstanceUID}.dcm",
                     "retry": {"initial": 0.2, "max_delay": 0.5, "max_attempts": 1000}},
        },
        routes=[{"name": "all", "pipeline": [{"set-attributes": {"set": {"InstitutionName": "X"}}}],
                 "to": ["ok", "down"]}],
        metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    immutable(down)
    svc = service(cfg).start()
    (started,) = [x for x in svc.log_lines() if x.get("event") == "pacsguard started"]
    port = started["metrics_port"]
    assert isinstance(port, int) and port > 0
    base = f"http://127.0.0.1:{port}"

    status, ctype, body = _get(base + "/healthz")
    assert (status, body) == (200, "ok\n")
    status, ctype, body = _get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    s = _samples(body)
    assert s['pacsguard_queue_depth{queue="processing"}'] == 0
    assert not any(k.startswith("pacsguard_received_total") for k in s)

    src = tmp_path / "src"
    for i in range(3):
        p = src / f"img{i}.dcm"
        make_image(p, instance=i + 1, patient=PATIENT_NAME, patient_id=PATIENT_ID)
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "garbage.dcm").write_bytes(b"not dicom\n" * 10)
    wait_for(lambda: len(visible_files(tmp_path / "ok")) == 3, 20, "3 deliveries to the healthy destination")

    def failing():
        s = _samples(_get(base + "/metrics")[2])
        return s.get('pacsguard_delivery_failures_total{destination="down"}', 0) >= 2 and s

    s = wait_for(failing, 20, "failed deliveries to show")
    assert s['pacsguard_received_total{source="in"}'] == 4
    assert s['pacsguard_routed_total{route="all"}'] == 3
    assert s['pacsguard_delivered_total{destination="ok"}'] == 3
    assert s.get('pacsguard_delivered_total{destination="down"}', 0) == 0
    assert s['pacsguard_quarantined_total{where="parse"}'] == 1
    assert s['pacsguard_queue_depth{queue="processing"}'] == 0
    assert s['pacsguard_queue_depth{queue="destination:down"}'] == 3
    assert s.get('pacsguard_queue_depth{queue="destination:ok"}', 0) == 0
    assert s['pacsguard_stage_seconds_count{outcome="ok",stage="set-attributes"}'] == 3
    assert s['pacsguard_spool_bytes'] > 0
    assert s['pacsguard_received_bytes_total{source="in"}'] > 3 * 8192
    body = _get(base + "/metrics")[2]
    assert PATIENT_NAME not in body and PATIENT_ID not in body

    immutable(down, False)
    wait_for(lambda: len(visible_files(down)) == 3, 20, "the destination to recover")

    def recovered():
        s = _samples(_get(base + "/metrics")[2])
        return s.get('pacsguard_delivered_total{destination="down"}') == 3 and s

    s = wait_for(recovered, 20, "delivered{down} == 3")
    assert s.get('pacsguard_queue_depth{queue="destination:down"}', 0) == 0
    assert s['pacsguard_delivery_latency_seconds_count{destination="down"}'] == 3

    assert _get(base + "/nothing-here")[0] == 404
    status, _, body = _get(base + "/healthz")
    assert (status, body) == (200, "ok\n")
    assert svc.stop() == 0


def test_embed_distortion_in_the_metrics(tmp_path, service):
    """The embed stage's distortion record (PSNR, bits per pixel, max change, threshold)
    reaches /metrics as histograms per route, through the worker process; no patient data."""
    import crypto_util as cu
    from e2e_util import write_ct_series

    site = cu.generate_key("site", "secret", tmp_path / "keys")
    reid = cu.generate_key("reid", "x25519", tmp_path / "keys")
    cfg = folder_config(
        tmp_path,
        destinations={"ok": {"type": "folder", "path": str(tmp_path / "ok"), "template": "{SOPInstanceUID}.dcm"}},
        routes=[{"name": "hidden", "pipeline": [{"deidentify": {"key": "site"}}, {"embed": {"recipients": ["reid"]}}],
                 "to": ["ok"]}],
        keys={"site": {"secret": str(site.private)}, "reid": {"private": str(reid.private)}},
        metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    svc = service(cfg).start()
    (started,) = [x for x in svc.log_lines() if x.get("event") == "pacsguard started"]
    base = f"http://127.0.0.1:{started['metrics_port']}"
    for p in write_ct_series(tmp_path / "src", 3, size=256, patient=PATIENT_NAME, patient_id=PATIENT_ID):
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    wait_for(lambda: len(visible_files(tmp_path / "ok")) == 3, 30, "3 embedded deliveries")

    def measured():
        s = _samples(_get(base + "/metrics")[2])
        return s.get('pacsguard_embed_psnr_db_count{route="hidden"}') == 3 and s

    s = wait_for(measured, 20, "the embed figures in the metrics")
    for name in ("psnr_db", "bits_per_pixel", "max_abs_change", "threshold", "carrier_bytes"):
        assert s[f'pacsguard_embed_{name}_count{{route="hidden"}}'] == 3, name
    assert 30 < s['pacsguard_embed_psnr_db_sum{route="hidden"}'] / 3 < 100
    assert 0 < s['pacsguard_embed_max_abs_change_sum{route="hidden"}'] / 3 <= 32
    assert s['pacsguard_embed_max_abs_change_bucket{le="32.0",route="hidden"}'] == 3
    assert s['pacsguard_stage_seconds_count{outcome="ok",stage="embed"}'] == 3
    body = _get(base + "/metrics")[2]
    assert PATIENT_NAME not in body and PATIENT_ID not in body
    assert svc.stop() == 0
