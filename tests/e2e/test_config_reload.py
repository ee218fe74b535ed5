"""Configuration: every error reported with its place; reloads on SIGHUP and on change of
the file, refused when invalid (the running config stays), applied without a restart and
without losing queued work when valid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import yaml

from e2e_util import PATIENT_ID, PATIENT_NAME, folder_config, make_image, sop_uid, visible_files
from peers import PACSGUARD, wait_for

REPO = Path(__file__).resolve().parents[2]

BAD = """\
watch:
  - path: {tmp}/in
    settle: soon
spool: {{path: {tmp}/spool, max_size: 10XB}}
destinations:
  out: {{type: folder, path: {tmp}/out, bogus: 1}}
  remote: {{type: nowhere}}
routes:
  - name: ok
    to: [out]
  - name: bad one
    match:
      Modality: {{regex: "(CT"}}
      NotAKeyword: 1
    pipeline:
      - set-attributes: {{set: {{Rows: "x"}}, remove: [Nope]}}
      - no-such-stage: {{}}
    to: [out, missing]
metrics: {{port: 70000}}
"""

# (place, a fragment of the message, line)
BAD_ERRORS = [
    ("watch[0].settle", "invalid duration 'soon'", 3),
    ("spool.max_size", "invalid size '10XB'", 4),
    ("destinations.out", "unknown key 'bogus'", 6),
    ("destinations.remote", "unknown destination type 'nowhere'", 7),
    ("routes[1].name", "should match pattern", 11),
    ("routes[1].match.Modality.regex", "invalid regular expression", 13),
    ("routes[1].match.NotAKeyword", "unknown DICOM keyword or transport fact 'NotAKeyword'", 14),
    ("routes[1].pipeline[0].set-attributes.set", "Rows (VR US) takes whole numbers", 16),
    ("routes[1].pipeline[0].set-attributes.remove", "'Nope' is not a DICOM keyword", 16),
    ("routes[1].pipeline[1].no-such-stage", "unknown stage 'no-such-stage'", 17),
    ("routes[1].to[1]", "undefined destination 'missing'", 18),
    ("metrics.port", "less than or equal to 65535", 19),
]


def _run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(PACSGUARD + list(args), capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_config_reports_every_error_with_its_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD.format(tmp=tmp_path))
    r = _run("check-config", str(bad))
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"{bad}: invalid configuration ({len(BAD_ERRORS)} errors)", r.stderr
    errors = [line.strip() for line in lines[1:]]
    assert len(errors) == len(BAD_ERRORS), r.stderr
    for place, fragment, line in BAD_ERRORS:
        match = [e for e in errors if e.startswith(f"{place}: ")]
        assert len(match) == 1, f"no single error for {place}: {r.stderr}"
        assert fragment in match[0] and match[0].endswith(f"(line {line})"), match[0]
    assert r.stdout == ""

    # `run` refuses the same file with the same list and starts nothing
    r2 = _run("run", "--config", str(bad), cwd=tmp_path)
    assert r2.returncode == 1 and r2.stderr == r.stderr
    assert not (tmp_path / "spool").exists()

    good = tmp_path / "good.yaml"
    good.write_text(folder_config(
        tmp_path, destinations={"a": {"type": "folder", "path": str(tmp_path / "a")},
                                "b": {"type": "folder", "path": str(tmp_path / "b")}},
        routes=[{"name": "ct", "match": {"Modality": "CT"}, "to": ["a"]}, {"name": "rest", "to": ["b"]}]))
    r = _run("check-config", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{good}: OK — 2 route(s), 2 destination(s), 1 source(s)"
    assert not (tmp_path / "spool").exists() and not (tmp_path / "in").exists()

    # the annotated example in the repository is valid too
    r = _run("check-config", str(REPO / "config" / "example.yaml"))
    assert r.returncode == 0, r.stderr


def _cfg(tmp_path, institution: str, *, mr_route: bool) -> str:
    destinations = {
        "ct": {"type": "folder", "path": str(tmp_path / "out-ct"), "template": "{SOPInstanceUID}.dcm",
               "retry": {"initial": 0.2, "factor": 2, "max_delay": 0.5, "max_attempts": 1000}},
    }
    routes = [{"name": "ct", "match": {"Modality": "CT"},
               "pipeline": [{"set-attributes": {"set": {"InstitutionName": institution}}}], "to": ["ct"]}]
    if mr_route:
        destinations["mr"] = {"type": "folder", "path": str(tmp_path / "out-mr"), "template": "{SOPInstanceUID}.dcm"}
        routes.append({"name": "mr", "match": {"Modality": "MR"}, "to": ["mr"]})
    return folder_config(tmp_path, destinations=destinations, routes=routes)


def _replace(path: Path, text: str) -> None:
    """Write a config the way a careful admin tool does: a temp file, then rename (the
    service polls the file; a half-written file must not be what it reads)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


INVALID = "routes:\n  - name: ct\n    match: {Modality: {regex: '(('}}\n    to: [nowhere]\n"


def test_reload_on_sighup_and_on_file_change(tmp_path, service, immutable):
    out_ct, out_mr = tmp_path / "out-ct", tmp_path / "out-mr"
    out_ct.mkdir()
    svc = service(_cfg(tmp_path, "V1", mr_route=False)).start()
    inbound = tmp_path / "in"
    src = tmp_path / "src"
    n = 0

    def drop(modality: str, count: int) -> list[str]:
        nonlocal n
        sops = []
        for _ in range(count):
            n += 1
            p = src / f"{modality}{n:03d}.dcm"
            sops.append(make_image(p, modality=modality, instance=n, patient=PATIENT_NAME, patient_id=PATIENT_ID))
            (inbound / p.name).write_bytes(p.read_bytes())
        return sops

    # `pacsguard status` reads the spool path from a config: while the service's own file is
    # deliberately invalid, use one that names the same spool
    status_cfg = tmp_path / "status.yaml"
    status_cfg.write_text(yaml.safe_dump({"spool": {"path": str(tmp_path / "spool")}}))

    def status() -> dict:
        r = _run("status", "--json", "--config", str(status_cfg))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def pending(dest: str) -> int:
        return status()["destinations"].get(dest, {}).get("pending", 0)

    def routed() -> int:
        return svc.log_text().count('"event": "object routed"')

    def reloads(event: str, trigger: str | None = None, after: int = 0) -> list[dict]:
        """Reload outcomes (refused / reloaded), optionally of one trigger, from the
        ``after``-th outcome of that kind on. (The file poll runs every second: it may
        notice a new file between its write and the SIGHUP, and report it too.)"""
        out = [x for x in svc.log_lines() if x.get("event", "").startswith(event)][after:]
        return [x for x in out if trigger is None or x["trigger"] == trigger]

    # the CT destination is down: what is routed stays queued for delivery
    immutable(out_ct)
    batch_a = drop("CT", 3)
    wait_for(lambda: routed() == 3, 20, "3 objects routed")
    assert pending("ct") == 3

    # 1. SIGHUP with an invalid file: refused, the old config keeps running
    _replace(svc.config_path, INVALID)
    svc.signal(signal.SIGHUP)
    wait_for(lambda: reloads("config reload refused", "SIGHUP"), 15, "the refusal")
    refused = reloads("config reload refused", "SIGHUP")[0]
    assert refused["event"] == "config reload refused; the running config stays in force"
    assert any(e.startswith("routes[0].match.Modality.regex: invalid regular expression") for e in refused["errors"])
    assert any(e.startswith("routes[0].to[0]: undefined destination 'nowhere'") for e in refused["errors"])
    assert svc.proc.poll() is None
    batch_b = drop("CT", 1)  # processed by the running (old) config
    wait_for(lambda: routed() == 4, 20, "4 objects routed")
    assert not reloads("config reloaded")

    # 2. SIGHUP with a valid file: changed stage option, new destination and route
    _replace(svc.config_path, _cfg(tmp_path, "V2", mr_route=True))
    svc.signal(signal.SIGHUP)
    wait_for(lambda: reloads("config reloaded", "SIGHUP"), 15, "the reload")
    done = reloads("config reloaded", "SIGHUP")[0]
    assert done["generation"] >= 1
    assert done["routes"] == ["ct", "mr"] and done["destinations"] == ["ct", "mr"]
    pid = svc.proc.pid
    batch_c = drop("CT", 2)
    batch_d = drop("MR", 2)
    wait_for(lambda: len(visible_files(out_mr)) == 2, 20, "MR objects on the new route")
    assert {sop_uid(p) for p in visible_files(out_mr)} == set(batch_d)
    wait_for(lambda: routed() == 8, 20, "8 objects routed")
    assert pending("ct") == 6

    # the destination comes back: queued work from before the reload is delivered
    immutable(out_ct, False)
    wait_for(lambda: len(visible_files(out_ct)) == 6, 30, "6 CT deliveries")
    inst = {sop_uid(p): str(pydicom.dcmread(p, stop_before_pixels=True).InstitutionName)
            for p in visible_files(out_ct)}
    assert {s: inst[s] for s in batch_a + batch_b} == {s: "V1" for s in batch_a + batch_b}
    assert {s: inst[s] for s in batch_c} == {s: "V2" for s in batch_c}

    # 3. change of the file, no signal: picked up by polling
    seen = len(reloads("config reloaded"))
    _replace(svc.config_path, _cfg(tmp_path, "V3", mr_route=False))
    wait_for(lambda: reloads("config reloaded", after=seen), 15, "the reload on file change")
    (done,) = reloads("config reloaded", after=seen)
    assert done["trigger"] == "config file changed" and done["generation"] == seen + 1
    assert done["routes"] == ["ct"]
    batch_e = drop("CT", 1)
    mr_late = drop("MR", 1)  # the MR route is gone: no route matches
    wait_for(lambda: len(visible_files(out_ct)) == 7, 20, "the CT object after the file change")
    got = {sop_uid(p): p for p in visible_files(out_ct)}
    assert str(pydicom.dcmread(got[batch_e[0]]).InstitutionName) == "V3"
    wait_for(lambda: '"reason": "no route matched"' in svc.log_text(), 20, "the MR object to be quarantined")
    entries = json.loads(_run("quarantine", "list", "--json", "--config", str(status_cfg)).stdout)
    assert [e["reason"] for e in entries] == ["no route matched"]
    assert sop_uid(src / "MR{:03d}.dcm".format(n)) == mr_late[0]

    # 4. an invalid file without a signal: refused, V3 stays in force
    seen = len(reloads("config reload refused"))
    _replace(svc.config_path, INVALID)
    wait_for(lambda: reloads("config reload refused", after=seen), 15, "the refusal on file change")
    assert [x["trigger"] for x in reloads("config reload refused", after=seen)] == ["config file changed"]
    batch_f = drop("CT", 1)
    wait_for(lambda: len(visible_files(out_ct)) == 8, 20, "a CT object after the refused change")
    got = {sop_uid(p): p for p in visible_files(out_ct)}
    assert str(pydicom.dcmread(got[batch_f[0]]).InstitutionName) == "V3"

    assert svc.proc.pid == pid and svc.proc.poll() is None  # never restarted
    assert len([x for x in svc.log_lines() if x.get("event") == "pacsguard started"]) == 1
    st = status()
    assert st["jobs"] == {"received": 0, "routed": 0, "done": 10, "quarantined": 1}, st
    time.sleep(0.2)
    assert svc.stop() == 0


def test_refused_sighup_reload_is_reported_once(tmp_path, service):
    """One SIGHUP with an invalid file: one refusal. (The file poll must not refuse the
    same file again a second later.)"""
    cfg = _cfg(tmp_path, "V1", mr_route=False)
    svc = service(cfg).start()
    _replace(svc.config_path, INVALID)
    svc.signal(signal.SIGHUP)
    wait_for(lambda: '"config reload refused' in svc.log_text(), 15, "the refusal")
    time.sleep(1.6)  # the file is polled every second
    refusals = [x["trigger"] for x in svc.log_lines() if x.get("event", "").startswith("config reload refused")]
    assert refusals in (["SIGHUP"], ["config file changed", "SIGHUP"]), \
        f"one invalid file, one SIGHUP, refused {len(refusals)} times: {refusals}"
    assert svc.stop() == 0
