"""The per-stage micro-benchmark times embed and reveal with the run's key store: the
option guesser picks key names of keys.py whose type the stage accepts (reveal opens
what embed made for the recipient), not the first option set that merely validates."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_embed_and_reveal_are_benchmarked_with_the_recipient_key(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    from tests.benchmarks import corpus, keys, stages

    names = keys.make_keys(tmp_path / "keys")
    store = keys.key_store(names)
    ct = corpus.clone_series(tmp_path / "ct", 2, size=128)
    out = stages.run(ct, [], names, store=store)
    for name in ("embed", "reveal"):
        assert out[name]["status"] == "ok", (name, out[name])
        assert out[name]["ct"]["ok"] == 2 and not out[name]["ct"].get("errors"), out[name]
    assert out["embed"]["options"]["recipients"] == [keys.NAMES["x25519"]]
    assert out["reveal"]["options"]["key"] == keys.NAMES["x25519"]
    assert out["deidentify"]["status"] == "ok"
