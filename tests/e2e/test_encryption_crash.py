"""kill -9 of an encrypting node in the middle of a burst, restart on the same config:

    storescu --> pacsguard (encrypt pixels for a PQ-hybrid key) --> dcmtk storescp

Nothing that storescu saw acknowledged is lost (every such SOP instance reaches
storescp after the restart), and nothing leaves half-encrypted: every object at the sink
decrypts and authenticates with ``pacsguard decrypt --key-file`` (the private key file
that ``pacsguard keys generate`` wrote) back to the very pixels that were sent. No
object at the sink is plaintext (marked or not) or truncated.
"""

from __future__ import annotations

import subprocess

import crypto_util as cu
from e2e_util import make_image, pid_alive, visible_files
from peers import PACSGUARD, Storescp, free_port, require, tool_env, wait_for

N = 200


def acknowledged(storescu_output: str) -> set[str]:
    """The files storescu -v reports a successful C-STORE response for."""
    acked, current = set(), None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            acked.add(current)
    return acked


def test_kill9_mid_burst_nothing_lost_nothing_half_encrypted(tmp_path, service):
    key = cu.generate_key("partner", "pq-hybrid", tmp_path / "keys")
    gen = tmp_path / "gen"
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    sops = {}
    for i in range(N):
        path = gen / f"img{i:04d}.dcm"
        sops[str(path)] = make_image(path, size=128, study=study, series=series, instance=i + 1)
    sent = cu.by_uid(gen.iterdir())

    port = free_port()
    with Storescp(tmp_path / "sink", aet="SINK") as sink:
        svc = service(cu.node_config(
            tmp_path, aet="PGA", port=port, keys={"partner": {"public": str(key.public)}},
            destinations={"sink": cu.dicom_destination("SINK", sink.port)},
            pipeline=[{"encrypt": {"scope": "pixels", "recipients": ["partner"]}}])).start()
        child = svc.log_lines()[-1].get("delivery_pid")
        burst = subprocess.Popen([require("storescu"), "-v", "-aec", "PGA", "-aet", "MODALITY", "127.0.0.1",
                                  str(port), *sorted(sops)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=tool_env())
        wait_for(lambda: svc.log_text().count('"event": "object received"') >= N * 2 // 5, 60,
                 "a part of the burst received", interval=0.005)
        svc.kill()
        output = burst.communicate(timeout=60)[0]
        acked = {sops[f] for f in acknowledged(output)}
        # the kill must hit the burst (how much was encrypted and delivered by then varies
        # with the machine's load: 26 to 77 of about 80 in trial runs)
        assert 0 < len(acked) < N, f"{len(acked)} of {N} acknowledged before the kill"
        if child:
            wait_for(lambda: not pid_alive(child), 15, "the orphaned worker process to exit")

        svc.start()

        def settled():
            st = svc.status()
            j = st["jobs"]
            return st if j["received"] == j["routed"] == 0 and st["destinations"]["sink"]["pending"] == 0 else None

        st = wait_for(settled, 60, "every stored object processed and delivered after the restart", interval=0.5)
        assert st["jobs"]["quarantined"] == 0 and st["quarantine"]["entries"] == 0, st
        assert st["jobs"]["done"] >= len(acked), st

    at_sink = cu.by_uid(sink.files())
    lost = acked - set(at_sink)
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged objects never reached the sink"
    assert set(at_sink) <= set(sent)
    for uid, ds in at_sink.items():
        cu.assert_encrypted(sent[uid], ds, key.key_id)

    res = subprocess.run(PACSGUARD + ["decrypt", str(sink.folder), "-o", str(tmp_path / "plain"), *key.cli_args()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and f"decrypted {len(at_sink)}, failed 0" in res.stdout, res.stderr[-2000:]
    plain = cu.by_uid(visible_files(tmp_path / "plain"))
    assert set(plain) == set(at_sink)
    for uid, ds in plain.items():
        cu.assert_restored(sent[uid], ds)
