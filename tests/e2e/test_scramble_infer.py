"""storescu -> pacsguard (scramble + infer) -> storescp: the research peer gets scrambled
images carrying the inference result; the key holder unscrambles them exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from peers import Pacsguard, Storescp, free_port, storescu, wait_for  # noqa: E402

from pacsguard.daemon.item import Item, TransportFacts  # noqa: E402
from pacsguard.daemon.keys import Key, secret_key_id  # noqa: E402
from pacsguard.plugins.decoders import marking, runtime, train_vit, vit  # noqa: E402
from pacsguard.plugins.decoders.infer import PACKAGE, model_info  # noqa: E402
from pacsguard.plugins.decoders.scramble import Unscramble  # noqa: E402
from tests.plugins.digits import write_digits  # noqa: E402

N = 12


def test_scrambled_images_reach_the_peer_with_their_inference_and_unscramble_exactly(tmp_path):
    _, _, xte, yte = train_vit.split()
    sent = write_digits(tmp_path / "digits", xte[:N], yte[:N])
    cfg = vit.Config(**model_info("vit-digits")["config"])
    plain_model = runtime.prepare(vit.ViT(cfg), runtime.read_weights(PACKAGE, "weights/vit_digits.safetensors"),
                                  torch.device("cpu"))
    expected = [str(int(v)) for v in runtime.run(plain_model, vit.normalize(xte[:N], (0, 255))).argmax(1)]

    secret = os.urandom(32)
    key_file = tmp_path / "vit.key"
    key_file.write_bytes(secret)
    key_file.chmod(0o600)
    port = free_port()
    with Storescp(tmp_path / "research", aet="RESEARCH") as scp:
        config = f"""
node: {{ae_title: PACSGUARD, port: {port}, allowed_callers: [{{ae_title: MODALITY}}]}}
spool: {{path: {tmp_path / 'spool'}}}
keys: {{vit: {{secret: {key_file}}}}}
destinations:
  research: {{type: dicom, ae_title: RESEARCH, host: 127.0.0.1, port: {scp.port}, retry: {{initial: 0.2}}}}
routes:
  - name: research
    match: {{calling_ae: MODALITY}}
    pipeline:
      - scramble: {{key: vit, block_size: 4, flip: true}}
      - infer: {{key: vit, device: cpu, batch_size: 16, max_wait_ms: 50}}
    to: [research]
metrics: {{enabled: false}}
logging: {{format: json}}
"""
        with Pacsguard(tmp_path / "pg", config) as pg:
            out = storescu(port, sent, calling="MODALITY")
            assert out.returncode == 0, out.stderr
            st = wait_for(lambda: (s := pg.status())["jobs"]["done"] == N and s, 120, "all digits delivered",
                          interval=0.5)
            assert st["quarantine"]["entries"] == 0
            inferences = [e for e in pg.log_lines() if e.get("event") == "inference"]
            assert len(inferences) == N and "DIGIT" not in pg.log_text()
        got = {pydicom.dcmread(p).SOPInstanceUID: p for p in scp.files()}

    key = Key("vit", "secret", secret_key_id(secret), str(key_file), secret=secret)
    facts = TransportFacts(source="test", source_type="folder")
    for i, (path, label) in enumerate(zip(sent, expected)):
        plain = pydicom.dcmread(path)
        received = got[plain.SOPInstanceUID]
        ds = pydicom.dcmread(received)
        assert not np.array_equal(ds.pixel_array, plain.pixel_array)  # scrambled on the wire
        b = ds.private_block(marking.GROUP, marking.INFER_CREATOR)
        assert b[marking.LABEL].value == label and b[marking.MODEL_KEY_ID].value == key.key_id
        assert f"PACSGUARD INFER vit-digits-1: {label}" in ds.ImageComments
        back = tmp_path / f"back-{i}.dcm"
        Unscramble(Unscramble.Options(key="vit")).process(Item(i, Path(received), facts, keys={"vit": key})).write(back)
        assert np.array_equal(pydicom.dcmread(back).pixel_array, plain.pixel_array)
