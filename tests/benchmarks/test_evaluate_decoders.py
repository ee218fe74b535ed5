"""The decoder evaluation report: the generator runs (quick sizes) and its figures are sane,
and each attack and statistic works where the answer is known by construction (so they
can fail). Behaviour, not speed: the timings are only checked to be there."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage")

from pacsguard.plugins.decoders import blocks  # noqa: E402
from tests.benchmarks import attacks, evaluate_decoders, scramble_stats  # noqa: E402
from tests.benchmarks import cipherstats as cs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def toy(pixels: np.ndarray, stored=(0, 255), bits=8) -> attacks.Image:
    return attacks.Image("toy", "toy", pixels.astype(np.int64), stored, bits)


def smooth(size: int = 64) -> np.ndarray:
    """A smooth, non-symmetric 8-bit image: every block's edges match only its neighbours'."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    return np.clip(np.rint(30 + 130 * x * x + 60 * y + 30 * np.sin(5 * x * y + 2 * y)), 0, 255).astype(np.int64)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = evaluate_decoders.evaluate(quick=True)
    folder = tmp_path_factory.mktemp("report")
    evaluate_decoders.write(results, folder / "decoders-evaluation.md", None)
    return results, folder


def test_the_generator_writes_the_report_and_its_json(report):
    results, folder = report
    text = (folder / "decoders-evaluation.md").read_text()
    for heading in ("## What `scramble` protects, and what it does not", "## `infer`: accuracy on the held-out split",
                    "## Attacks on `scramble`", "## Cipher-image statistics", "## Throughput per image",
                    "### Inference: micro-batched vs one image at a time", "## Neural cipher"):
        assert heading in text
    assert "Quick run" in text
    assert "| in-block positions right |" in text
    assert all("in_block_positions_right_pct" in a["shared_order"] for a in results["attacks"])
    assert "](decoders-evaluation.png)" not in text  # quick runs draw no figure
    assert "](fig.png)" in evaluate_decoders.render({**results, "figure": "fig.png"})
    assert "### The infer route: many images under one key" in text
    if results["neural"]["present"]:  # on a tree with the neural cipher: its own figures, listed
        assert "Its own evaluation" in text and "| test_images |" in text
        st = results["neural_cipher_statistics"]["schemes"]
        assert abs(st["AES-256-GCM"]["fresh_key"]["npcr_pct"] - 99.609) < 0.1  # the 8-bit ideal
        assert "| neural-encrypt |" in text
    else:
        assert "not present" in text
    again = json.loads((folder / "decoders-evaluation.json").read_text())
    assert again["infer"]["test_images"] == results["infer"]["test_images"] == 60


def test_the_converted_model_agrees_on_every_image_and_a_wrong_key_collapses(report):
    inf = report[0]["infer"]
    for variant in ("flip", "no_flip"):
        r = inf[variant]
        assert r["agreements"] == inf["test_images"] and r["disagreements"] == 0
        assert r["converted_model_scrambled_images"] == r["plain_model_plain_images"] > 0.9
        assert r["wrong_key_model_scrambled_images"] < 0.3 < r["converted_model_scrambled_images"]
        assert r["plain_model_scrambled_images"] < 0.3
        assert r["float64_model_level"]["max_logit_difference"] < 1e-9


def test_the_attack_and_statistics_figures_are_in_range(report):
    results = report[0]
    for a in results["attacks"]:
        assert a["no_key"]["scrambled"]["ssim"] < 0.3 and not a["no_key"]["scrambled"]["identical"]
        assert not a["wrong_key"]["identical"]
        assert a["round_trip_exact"]
        assert a["leading_bit"]["flip_layer_removed_pct"] == 100.0  # a value and its flip fold alike
        assert a["chosen_plaintext"]["identical"]
        j = a["jigsaw"]["block_positions_only"]
        assert 0 <= j["placed_right"] <= 1 and 0 <= j["neighbours_right"] <= 1
    for s in results["cipher_statistics"]:
        aes = s["schemes"]["AES-256-GCM"]
        # near the ideal (the acceptance bound is a 5 % test: an ideal cipher misses it 1 time in 20)
        assert abs(aes["fresh_key"]["npcr_pct"] - s["ideal"]["npcr_pct"]) < 0.1
        assert abs(aes["key_sensitivity"]["npcr_pct"] - s["ideal"]["npcr_pct"]) < 0.1
        assert abs(aes["fresh_key"]["uaci_pct"] - s["ideal"]["uaci_pct"]) < 1.0
        assert abs(aes["correlation_horizontal"]) < s["ideal"]["correlation_bound"]
        plain = s["schemes"][f"scramble (block {attacks.BLOCK})"]
        assert plain["entropy_bits"] == s["plain"]["entropy_bits"]  # the same values, moved
    for x in results["infer_route_attack"]:
        assert x["block"] == 4 and x["flip"]
        # the pooled ciphertext-only attack gives the plain model back what scrambling took
        assert x["plain_model_on_recovered"] > 0.5 > x["plain_model_on_scrambled"]
    tp = results["throughput"]
    assert all(f["ms_p50"] > 0 for f in tp["cpu"].values())
    assert tp["gpu"]["device"] or tp["gpu"]["note"] == "not measured (no GPU lent)"
    mb = results["micro_batching"]
    assert mb["stage"]["batched_images_per_s"] > 0 and mb["pipeline"]["one_at_a_time_images_per_s"] > 0


def test_aes_gcm_npcr_is_near_the_8_bit_ideal_and_scramble_of_a_flat_image_is_not():
    img = toy(np.add.outer(np.arange(256), np.arange(256)) % 256)
    a = scramble_stats.aes_gcm(img, img.pixels, b"k" * 32)
    b = scramble_stats.aes_gcm(img, img.pixels, scramble_stats.flip_bit(b"k" * 32))
    assert 99.5 < cs.npcr(a, b) < 99.72  # ideal 99.609
    flat = toy(np.full((64, 64), 100))
    k1, k2 = attacks.key_for(flat, b"a" * 32, flip=False), attacks.key_for(flat, b"b" * 32, flip=False)
    assert cs.npcr(attacks.scramble(flat, k1), attacks.scramble(flat, k2)) == 0.0  # nothing to move


def test_leading_bit_attack_undoes_negative_positive_alone_and_not_the_permutations():
    plain = smooth()  # values 40..~255: some in either half of 0..255
    low = np.clip(plain // 2, 0, 127)  # every value in the lower half
    for pixels in (plain, low):
        img = toy(pixels)
        key = attacks.key_for(img, block=16, flip=True)
        flip_only = attacks.scramble(img, attacks.partial_key(key, sigma=False, pi=False))
        assert not np.array_equal(flip_only, pixels)
        assert np.array_equal(attacks.fold(flip_only, img.stored), attacks.fold(pixels, img.stored))
    img = toy(low)
    key = attacks.key_for(img, block=16, flip=True)
    assert np.array_equal(attacks.fold(attacks.scramble(img, attacks.partial_key(key, sigma=False, pi=False)),
                                       img.stored), low)  # the toy case: recovered exactly
    full = attacks.scramble(img, key)
    assert not np.array_equal(attacks.fold(full, img.stored), low)  # the permutations stay


def test_minimum_difference_attack_recovers_a_smooth_image_and_the_shared_mask():
    img = toy(smooth() // 2)  # in one half of the range: a value and its flip lie far apart
    key = attacks.key_for(img, block=16, flip=True)
    flip_only = attacks.scramble(img, attacks.partial_key(key, sigma=False, pi=False))
    decoded = attacks._polarity(attacks.minimum_difference(flip_only, img.stored), img.pixels, img.stored)
    assert np.mean(decoded == img.pixels) > 0.99
    img = toy(smooth())  # across the middle of the range: the majority over blocks still finds the mask
    key = attacks.key_for(img, block=16, flip=True)
    _, mask = attacks.shared_mask(attacks.scramble(img, key), img.stored, 16)
    right = float(np.mean(mask == key.flip))
    assert max(right, 1 - right) > 0.95
    noise = toy(np.random.default_rng(0).integers(0, 256, (64, 64)))
    k = attacks.key_for(noise, block=16, flip=True)
    guess = attacks.minimum_difference(attacks.scramble(noise, attacks.partial_key(k, sigma=False, pi=False)),
                                       noise.stored)
    assert np.mean(attacks._polarity(guess, noise.pixels, noise.stored) == noise.pixels) < 0.9  # no structure


def test_jigsaw_solver_reassembles_a_smooth_image_and_not_noise():
    img = toy(smooth(96))
    key = attacks.partial_key(attacks.key_for(img, block=16), pi=False, flip=False)
    r = attacks.jigsaw(attacks.scramble(img, key), img.pixels, 16)
    assert r["placed_right"] == 1.0 and r["identical"]
    noise = toy(np.random.default_rng(1).integers(0, 256, (96, 96)))
    key = attacks.partial_key(attacks.key_for(noise, block=16), pi=False, flip=False)
    r = attacks.jigsaw(attacks.scramble(noise, key), noise.pixels, 16)
    assert r["placed_right"] < 0.5 and not r["identical"]


def test_chosen_plaintext_attack_recovers_the_order_of_its_key_only():
    img = toy(np.random.default_rng(2).integers(0, 256, (64, 64)))
    key = attacks.key_for(img, block=16, flip=True)
    assert attacks.chosen_plaintext(img, key)["identical"]
    lo, hi = img.stored
    chosen = attacks.chosen_plaintexts(img.pixels.shape, img.stored)
    source, flipped = attacks.recover_order([attacks.scramble(toy(c), key) for c in chosen], img.stored)
    other = attacks.scramble(img, attacks.key_for(img, b"another key".ljust(32, b"\0"), block=16, flip=True))
    out = np.empty(img.pixels.size, dtype=np.int64)
    out[source] = np.where(flipped, (lo + hi) - other.ravel(), other.ravel())
    assert not np.array_equal(out.reshape(img.pixels.shape), img.pixels)  # another key's image stays scrambled


def test_psnr_and_ssim_tell_equal_from_different():
    a = smooth()
    assert attacks.scores(a, a) == {"psnr_db": None, "identical": True, "ssim": 1.0}
    s = attacks.scores(a, a[::-1])
    assert not s["identical"] and s["psnr_db"] < 20 and s["ssim"] < 0.9


def test_the_neural_section_says_not_present_when_the_module_is_missing(monkeypatch):
    import pacsguard.plugins.decoders as decoders

    monkeypatch.setitem(sys.modules, "pacsguard.plugins.decoders.train_neural", None)  # import fails
    monkeypatch.delattr(decoders, "train_neural", raising=False)  # (once imported, the package holds it)
    n = evaluate_decoders.neural()
    assert n["present"] is False and n["note"].startswith("not present")
    assert "not present" in "\n".join(evaluate_decoders._neural(n))


def test_a_wrong_key_does_not_unscramble():
    img = toy(smooth())
    key, wrong = attacks.key_for(img, b"x" * 32), attacks.key_for(img, b"y" * 32)
    c = attacks.scramble(img, key)
    assert np.array_equal(attacks.unscramble(c, img, key), img.pixels)
    assert not np.array_equal(attacks.unscramble(c, img, wrong), img.pixels)
    assert isinstance(key, blocks.BlockKey)


def test_the_harness_takes_the_inference_benchmark_and_prints_it(report):
    from tests.benchmarks import harness, inference

    assert harness.parse_args(["--no-inference"]).no_inference
    assert not harness.parse_args([]).no_inference
    lines = inference.report_lines({"status": "ok", **report[0]["micro_batching"]})
    assert lines[1].startswith("INFERENCE (infer, 64 scrambled 32x32 digits")
    assert "Infer stage" in lines[2] and "spool + Processor" in lines[3]
    assert inference.report_lines({"status": "skipped", "why": "needs torch==2.13.0"})[1] == \
        "INFERENCE: skipped: needs torch==2.13.0"


def test_the_in_block_order_is_recovered_from_a_smooth_image_alone_and_not_from_noise():
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(np.random.default_rng(3).normal(size=(128, 128)), 4)
    img = toy(np.rint((f - f.min()) / (f.max() - f.min()) * 255))
    key = attacks.key_for(img, block=16, flip=False)
    r = attacks.shared_order_attack(attacks.scramble(img, key), img.pixels, key, 16, reassemble=False)
    assert r["in_block_positions_right_pct"] == 100.0
    noise = toy(np.random.default_rng(4).integers(0, 256, (128, 128)))
    key = attacks.key_for(noise, block=16, flip=False)
    r = attacks.shared_order_attack(attacks.scramble(noise, key), noise.pixels, key, 16, reassemble=False)
    assert r["in_block_positions_right_pct"] < 10


def test_unshuffle_with_the_true_order_gives_the_block_positions_only_image():
    img = toy(smooth())
    key = attacks.key_for(img, block=16, flip=False)
    # the true arrangement: slot s holds the cipher position j with pi[j] == s
    arr = np.argsort(key.pi)
    assert np.array_equal(attacks.unshuffle(attacks.scramble(img, key), arr, 16),
                          attacks.scramble(img, attacks.partial_key(key, pi=False, flip=False)))


def test_the_figure_is_drawn_from_a_real_slice(tmp_path):
    pytest.importorskip("matplotlib")
    if not attacks.load_images([evaluate_decoders.TIMED_CT]):
        pytest.skip(f"{evaluate_decoders.TIMED_CT} (pydicom-data) is not installed")
    name = evaluate_decoders.make_figure(tmp_path / "fig.png")
    assert name == "fig.png"
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evaluate_decoders.make_digits_figure(tmp_path / "digits.png") == "digits.png"
    assert (tmp_path / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_smooth_image_comes_back_exactly_from_its_scrambled_pixels_alone():
    """The whole ciphertext-only chain: the flip mask by minimum difference over the blocks,
    the in-block order, the block positions by the jigsaw solver."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(np.random.default_rng(3).normal(size=(128, 128)), 4)
    img = toy(np.rint((f - f.min()) / (f.max() - f.min()) * 200 + 20))
    r = attacks.attack_image(img)
    assert not r["no_key"]["scrambled"]["identical"] and r["no_key"]["scrambled"]["ssim"] < 0.2
    assert r["minimum_difference"]["shared_mask_bits_right_pct"] == 100.0
    assert r["shared_order"]["in_block_positions_right_pct"] == 100.0
    assert r["shared_order"]["reassembly_vs_plain_best_symmetry"]["identical"]
