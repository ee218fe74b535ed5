"""gpu-decode: with it on, every stage gets the pixels pydicom's own decoders give.

- The CPU fallback (no GPU, as here) equals pydicom's decoders on every compressed bundled
  file of pydicom and pydicom-data; files pydicom itself cannot decode are counted, by
  reason, and left out of the comparison.
- The plugin's batched path (one decode call for a group, pydicom assembling the arrays
  from the frames: dtype, signed-data correction, colour) run with pylibjpeg as the frame
  decoder equals pydicom exactly: what the GPU backend plugs into is checked here too.
- On a CUDA GPU with nvImageCodec, the GPU's arrays are compared with pydicom's the same
  way (exact for lossless syntaxes); without one that test is skipped, never passed.
- ``pacsguard plugins`` shows which decoder serves which transfer syntax; the config turns
  it on; scramble / unscramble and a batching group work through the hooks with it on.
"""

from __future__ import annotations

import collections
import functools
import json
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest

from pacsguard.daemon.config import ConfigError, PixelsConfig, load_config_text
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import Key, secret_key_id
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.runtime import build_runtime
from pacsguard.plugins import gpudecode
from pacsguard.plugins.decoders.scramble import Scramble, Unscramble
from pacsguard.plugins.gpudecode import backend, decode, support
from tests.plugins.gpudecode_corpus import CpuFrames, compressed_files, reference

FACTS = TransportFacts(source="test", source_type="folder")
PM = get_plugin_manager(entry_points=False)
DECODE = PM.hook.pacsguard_decode_pixels
BATCH = PM.hook.pacsguard_decode_pixels_batch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


#: ``pixels: {decoder: gpu}``: what the items of a config generation with it carry
GPU_ON = PixelsConfig(decoder="gpu")


@pytest.fixture
def gpu_on():
    """The plugin's counters from zero."""
    decode.STATS.reset()
    yield


def item(path, i=1, keys=None, pixels=GPU_ON) -> Item:
    return Item(i, path, FACTS, keys=keys, decode_pixels=DECODE, decode_batch=BATCH, pixels=pixels)


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


@functools.lru_cache(maxsize=None)
def corpus() -> tuple[list, collections.Counter]:
    """[(path, pydicom's array)] of the files pydicom decodes here; why not, counted."""
    files, skipped = [], collections.Counter()
    for path in compressed_files():
        arr, why = reference(path)
        if arr is None:
            skipped[why] += 1
        else:
            files.append((path, arr))
    return files, skipped


def test_the_corpus_is_every_compressed_bundled_file():
    files, skipped = corpus()
    syntaxes = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p, _ in files}
    # JPEG baseline, extended, lossless SV1, JPEG-LS (2), JPEG 2000 (2), RLE at least
    assert len(files) >= 50 and len(syntaxes) >= 8, (len(files), sorted(syntaxes))
    assert sum(skipped.values()) + len(files) == len(compressed_files())


# --- the CPU fallback -------------------------------------------------------------------


def test_cpu_fallback_equals_pydicom_on_every_compressed_bundled_file(gpu_on, record_property):
    gpu, why = backend.PROBE.get("auto")
    if gpu is not None:
        pytest.skip("a GPU is usable here: the fallback for want of one cannot be shown (see the GPU test)")
    assert why  # the reason the CPU serves, in words
    files, skipped = corpus()
    record_property("skipped_by_pydicom", dict(skipped))
    for i, (path, expected) in enumerate(files):
        got = item(path, i).pixels()
        assert same(got, expected), path.name
    # the batch hook, over the whole corpus at once, gives the same
    group = [item(p, i) for i, (p, _) in enumerate(files)]
    for (path, expected), got in zip(files, Item.pixels_of(group)):
        assert same(got, expected), path.name
    assert gpudecode.active_backend("gpu", "auto") is None and decode.STATS.gpu == 0
    print(f"\ncompared {len(files)} files; left out (pydicom cannot decode them): {dict(skipped)}")


def test_off_by_default_the_plugin_passes():
    path = compressed_files()[0]
    for off in (None, PixelsConfig()):
        assert gpudecode.pacsguard_decode_pixels(item=item(path, pixels=off)) is None
        assert gpudecode.pacsguard_decode_pixels_batch(items=[item(path, pixels=off)]) is None


def test_reasons_for_the_cpu(gpu_on):
    """Each object the GPU path does not take says why: syntax, layout, missing GPU."""
    by_ts = {}
    for path in compressed_files():
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        by_ts.setdefault(ts, path)
    frames = CpuFrames()
    rle = by_ts[pydicom.uid.RLELossless]
    assert decode.decode_items([item(rle)], frames) == [None]
    assert decode.STATS.cpu == {"transfer syntax not served on the GPU": 1}
    assert frames.calls == []  # nothing was sent to the frame decoder
    gone = backend._make("auto") if not backend.installed() else (None, None)
    if not backend.installed():
        assert gone == (None, "nvImageCodec is not installed (pip install pacsguard[gpudecode])")
    elif backend.cuda_devices()[0] == 0:
        assert "no CUDA GPU" in backend.PROBE.get("auto")[1] or "no usable CUDA GPU" in backend.PROBE.get("auto")[1]


# --- the batched path, with pylibjpeg decoding the frames ---------------------------------


@functools.lru_cache(maxsize=None)
def _gpu_served():
    files, _ = corpus()
    return [(p, a) for p, a in files
            if pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID in support.GPU_SYNTAXES]


def test_batched_path_with_pylibjpeg_frames_equals_pydicom(gpu_on):
    files = _gpu_served()
    assert len(files) >= 30
    frames = CpuFrames()
    items = [item(p, i) for i, (p, _) in enumerate(files)]
    got = decode.decode_items(items, frames)
    assert frames.calls == [sum(len(decode.plan(item(p))[0].frames) for p, _ in files)]  # one call, all frames
    wrong = [p.name for (p, expected), arr in zip(files, got) if arr is not None and not same(arr, expected)]
    assert wrong == []
    served = sum(a is not None for a in got)
    # every object is served but those the frame decoder refuses (then the CPU path decides)
    assert served == decode.STATS.gpu and served >= len(files) - sum(decode.STATS.cpu.values())
    assert served >= 30, decode.STATS.cpu
    print(f"\nserved {served} of {len(files)}; to the CPU: {dict(decode.STATS.cpu)}")
    signed = [p.name for (p, e), a in zip(files, got) if a is not None and e.dtype.kind == "i"]
    assert signed, "signed-data correction was not exercised"


def test_nvimagecodec_calls_with_its_cpu_backends_equal_pydicom(gpu_on):
    """The backend's own nvImageCodec calls (code streams, one batched decode per colour
    handling, host images, the checks of what came back) with nvImageCodec's CPU backends
    (libjpeg-turbo, OpenCV) in place of the GPU: what they decode equals pydicom; what
    they refuse goes to the CPU decoders, counted. Not the GPU's figures or kernels."""
    if not backend.installed():
        pytest.skip("nvImageCodec is not installed (pip install pacsguard[gpudecode])")
    try:
        nv = backend.GpuBackend(0, cpu_only=True)
    except Exception as exc:
        pytest.skip(f"nvImageCodec's CPU backends cannot start here ({type(exc).__name__})")
    files = _gpu_served()
    got = decode.decode_items([item(p, i) for i, (p, _) in enumerate(files)], nv)
    served = worst = 0
    for (path, expected), arr in zip(files, got):
        if arr is None:
            continue
        served += 1
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert arr.dtype == expected.dtype and arr.shape == expected.shape, path.name
        diff = int(np.abs(arr.astype(np.int64) - expected.astype(np.int64)).max())
        # libjpeg-turbo and libjpeg round the inverse DCT differently by at most 1
        assert diff <= (0 if ts in support.LOSSLESS or ts in pydicom.uid.JPEG2000TransferSyntaxes else 1), \
            (path.name, diff)
        worst = max(worst, diff)
    assert served == decode.STATS.gpu and served + sum(decode.STATS.cpu.values()) == len(files)
    names = {p.name for (p, _), a in zip(files, got) if a is not None}
    assert {"J2K_pixelrep_mismatch.dcm", "US1_J2KR.dcm", "SC_rgb_jpeg_dcmtk.dcm"} <= names  # signed, RCT, YBR
    print(f"\nnvImageCodec CPU backends: {served} of {len(files)} equal to pydicom (largest difference {worst});"
          f" to the CPU decoders: {dict(decode.STATS.cpu)}")


# --- the GPU ----------------------------------------------------------------------------


def _tolerance(ts, expected: np.ndarray) -> int:
    """Lossless: exact. Lossy: two conforming decoders may round the inverse DCT / wavelet
    differently; allow 1 % of the stored range (at least 2)."""
    if ts in support.LOSSLESS:
        return 0
    span = int(expected.max()) - int(expected.min()) if expected.size else 0
    return max(2, span // 100)


def test_gpu_equals_pydicom_on_every_compressed_bundled_file(gpu_on):
    gpu, why = backend.PROBE.get("auto")
    if gpu is None:
        pytest.skip(f"GPU comparison not run: {why}")
    files = _gpu_served()
    got = []
    for at in range(0, len(files), 8):  # batches, as a batching stage gets them
        got += decode.decode_items([item(p, i) for i, (p, _) in enumerate(files[at:at + 8])], gpu)
    worst = {}
    for (path, expected), arr in zip(files, got):
        if arr is None:
            continue  # the GPU refused a frame: the CPU decodes it (counted in STATS.cpu)
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert arr.dtype == expected.dtype and arr.shape == expected.shape, path.name
        diff = int(np.abs(arr.astype(np.int64) - expected.astype(np.int64)).max()) if arr.size else 0
        assert diff <= _tolerance(ts, expected), (path.name, ts.name, diff)
        worst[ts.name] = max(worst.get(ts.name, 0), diff)
    assert decode.STATS.gpu >= 1, decode.STATS.cpu
    print(f"\nGPU {gpu.name}: {decode.STATS.gpu} objects on the GPU, CPU: {dict(decode.STATS.cpu)}; "
          f"largest difference by syntax: {worst}")


# --- stages through the hooks ------------------------------------------------------------


def _secret() -> Key:
    secret = bytes(range(32))
    return Key("vit", "secret", secret_key_id(secret), "/test/vit.key", secret=secret)


def _j2k_16bit():
    for path, arr in _gpu_served():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless and ds.BitsAllocated == 16 \
                and ds.Rows % 16 == 0 and ds.Columns % 16 == 0 and int(ds.get("NumberOfFrames", 1) or 1) == 1 \
                and "IconImageSequence" not in ds:
            return path, arr
    pytest.fail("no 16-bit JPEG 2000 lossless file in the corpus")


def _scramble_roundtrip(path, tmp_path):
    keys = {"vit": _secret()}
    scrambled = tmp_path / "s.dcm"
    Scramble(Scramble.Options(key="vit", block_size=16)).process(item(path, 1, keys)).write(scrambled)
    back = tmp_path / "b.dcm"
    Unscramble(Unscramble.Options(key="vit")).process(item(scrambled, 2, keys)).write(back)
    return pydicom.dcmread(scrambled).pixel_array, pydicom.dcmread(back).pixel_array


def test_scramble_through_the_hook_with_the_plugin_on(gpu_on, tmp_path):
    path, plain = _j2k_16bit()
    scrambled, back = _scramble_roundtrip(path, tmp_path)
    assert not np.array_equal(scrambled, plain)
    assert same(back, plain)  # the pixels the stage got were pydicom's, exactly


def test_scramble_through_the_plugins_batched_path(gpu_on, tmp_path, monkeypatch):
    """The plugin serving (its frame decoder pylibjpeg here): the stage gets its arrays."""
    frames = CpuFrames()
    monkeypatch.setattr(gpudecode, "active_backend", lambda decoder, device: frames if decoder == "gpu" else None)
    path, plain = _j2k_16bit()
    scrambled, back = _scramble_roundtrip(path, tmp_path)
    assert decode.STATS.gpu == 1 and frames.calls == [1]  # the scramble's decode; unscramble's input is native
    assert same(back, plain)


def test_hook_pacsguard_decode_pixels_batch(gpu_on, monkeypatch):
    files = _gpu_served()[:6]
    # default (gpu-decode off): one by one, as item.pixels()
    out = BATCH(items=[item(p, i, pixels=None) for i, (p, _) in enumerate(files)])
    assert all(same(a, e) for a, (_, e) in zip(out, files))
    # gpu-decode batching: the whole group's frames in one decode call
    frames = CpuFrames()
    monkeypatch.setattr(gpudecode, "active_backend", lambda decoder, device: frames if decoder == "gpu" else None)
    out = Item.pixels_of([item(p, i) for i, (p, _) in enumerate(files)])
    assert len(frames.calls) == 1 and all(same(a, e) for a, (_, e) in zip(out, files))


# --- config and the plugins table ----------------------------------------------------------


def test_config_turns_it_on(tmp_path):
    registry = collect(PM)
    loaded = load_config_text("pixels: {decoder: gpu, device: 'cuda:1'}\n", registry)
    assert loaded.config.pixels == PixelsConfig(decoder="gpu", device="cuda:1")
    runtime = build_runtime(loaded, registry)
    assert runtime.pixels == PixelsConfig(decoder="gpu", device="cuda:1")  # the generation's items carry it
    assert load_config_text("{}\n", registry).config.pixels.decoder == "cpu"  # off by default
    for bad in ("pixels: {decoder: tpu}\n", "pixels: {device: 'gpu0'}\n", "pixels: {batch: 4}\n"):
        with pytest.raises(ConfigError):
            load_config_text(bad, registry)


def test_plugins_shows_which_decoder_serves_which_syntax(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pacsguard.daemon.cli", "plugins"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if "transfer syntax" in line and "why not GPU" in line)
    rows = {}
    for line in lines[head + 2:]:
        parts = line.strip().split("  ")
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) < 3 or not parts[0][:1].isalpha() or "." not in parts[0]:
            break
        rows[parts[0].split()[-1]] = (parts[1], parts[2])
    assert set(rows) == set(support.syntaxes())
    gpu, why = backend.PROBE.get("auto")
    for ts, (decoder, reason) in rows.items():
        if ts in support.NOT_ON_GPU:
            assert decoder.startswith("cpu: pydicom") and reason == support.NOT_ON_GPU[ts]
        elif gpu is None:
            assert decoder.startswith("cpu: pydicom") and reason == why
        else:
            assert decoder.startswith("gpu: nvImageCodec") and reason == "-"
    assert rows[pydicom.uid.JPEG2000Lossless][0].split(": ", 1)[1] in (
        "nvImageCodec nvJPEG2000", "pydicom: pillow, pylibjpeg", "pydicom: pylibjpeg", "pydicom: pillow")
    out = subprocess.run([sys.executable, "-m", "pacsguard.daemon.cli", "plugins", "--json"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    entry = {e["name"]: e for e in json.loads(out.stdout)}["pacsguard.plugins.gpudecode"]
    assert entry["hooks"] == ["pacsguard_decode_pixels", "pacsguard_decode_pixels_batch"]
    assert any("why not GPU" in line for line in entry["report"])


def test_no_gpu_libraries_loaded_without_a_gpu():
    """Without a CUDA device the plugin never imports nvImageCodec (no CUDA libraries)."""
    if backend.cuda_devices()[0]:
        pytest.skip("a CUDA device is present")
    code = ("import sys; from pacsguard.plugins import gpudecode;"
            "assert gpudecode.active_backend('gpu', 'auto') is None; gpudecode.table();"
            "print('nvidia.nvimgcodec' in sys.modules)")
    with warnings.catch_warnings():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_the_pipeline_gives_items_their_generations_setting():
    """A processor's items carry the ``pixels:`` section of the config generation that
    routed them (no process-wide setting)."""
    from pacsguard.daemon.pipeline import Processor, _Work
    from pacsguard.daemon.spool import Job

    registry = collect(PM)
    runtime = build_runtime(load_config_text("pixels: {decoder: gpu}\n", registry), registry)
    proc = Processor(None, PM.hook, lambda: runtime, workers=1)
    path = compressed_files()[0]
    job = Job(1, path, path.stat().st_size, FACTS, "received")
    made = proc._new_item(_Work(job, None, runtime.keys, False, runtime.pixels))
    assert made.pixel_settings.decoder == "gpu"
    assert made._decode_batch is PM.hook.pacsguard_decode_pixels_batch
