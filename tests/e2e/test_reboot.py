"""A power cut after processing, before delivery: the OS restarts (a new boot) and the
processed outputs, which the spool does not fsync, are gone or cut short. Nothing is lost:

    storescu --> pacsguard (encrypt pixels) --> [destination down]
    kill -9; another boot recorded; the processed outputs truncated (as a power cut leaves them)
    restart --> dcmtk storescp: every acknowledged object arrives, processed again, and decrypts

The processed outputs are truncated by hand: what the OS's page cache would have lost. The
boot is simulated by writing another boot id into the spool's record of the boot that
wrote the outputs (``meta.outputs_boot``); the service compares it with
``/proc/sys/kernel/random/boot_id`` at start.
"""

from __future__ import annotations

import sqlite3
import subprocess

import crypto_util as cu
import pytest
from e2e_util import events, pid_alive, visible_files
from peers import PACSGUARD, Storescp, free_port, wait_for

from pacsguard.daemon.spool import boot_id
from tests.conftest import write_ct_series

pytestmark = pytest.mark.skipif(boot_id() is None, reason="the OS does not tell its boot id: outputs are fsync'd")


def test_outputs_lost_in_a_power_cut_are_processed_again_after_the_reboot(tmp_path, service):
    key = cu.generate_key("partner", "x25519", tmp_path / "keys")
    files = {p: "" for p in write_ct_series(tmp_path / "in", 6, size=128)}
    sent = cu.by_uid(files)
    port, sink_port = free_port(), free_port()
    svc = service(cu.node_config(
        tmp_path, aet="PGA", port=port, keys={"partner": {"public": str(key.public)}},
        destinations={"sink": cu.dicom_destination("SINK", sink_port)},
        pipeline=[{"encrypt": {"scope": "pixels", "recipients": ["partner"]}}])).start()
    child = svc.log_lines()[-1].get("delivery_pid")
    cu.send(port, files, "PGA")  # acknowledged: durable
    wait_for(lambda: svc.status()["jobs"]["routed"] == len(files), 60, "every object processed")
    outputs = sorted((tmp_path / "spool" / "out").glob("*.dcm"))
    assert len(outputs) == len(files)
    svc.kill()
    if child:
        wait_for(lambda: not pid_alive(child), 15, "the orphaned worker process to exit")

    with sqlite3.connect(tmp_path / "spool" / "spool.db") as db:
        (recorded,) = db.execute("SELECT value FROM meta WHERE key='outputs_boot'").fetchone()
        assert recorded == boot_id()
        db.execute("UPDATE meta SET value='a boot before this one' WHERE key='outputs_boot'")
    for i, out in enumerate(outputs):  # what a power cut leaves of unsynced files
        out.write_bytes(out.read_bytes()[: 1000 * i])

    with Storescp(tmp_path / "sink", aet="SINK", port=sink_port):
        svc.start()
        wait_for(lambda: svc.status()["jobs"]["done"] == len(files), 60, "every object delivered after the reboot")
        st = svc.status()
        assert st["jobs"]["quarantined"] == 0 and st["quarantine"]["entries"] == 0, st
    again = [e for e in events(svc, "the OS restarted since processed objects were written: they are processed "
                                    "again from the received files")]
    assert again and again[-1]["jobs"] == len(files)

    at_sink = cu.by_uid(visible_files(tmp_path / "sink"))
    assert set(at_sink) == set(sent)  # each once, none lost
    for uid, ds in at_sink.items():
        cu.assert_encrypted(sent[uid], ds, key.key_id)
    res = subprocess.run(PACSGUARD + ["decrypt", str(tmp_path / "sink"), "-o", str(tmp_path / "plain"),
                                      *key.cli_args()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and f"decrypted {len(files)}, failed 0" in res.stdout, res.stderr[-2000:]
    for uid, ds in cu.by_uid(visible_files(tmp_path / "plain")).items():
        cu.assert_restored(sent[uid], ds)
