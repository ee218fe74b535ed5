"""The torch runtime of the decoder plugins: optional, chosen once, weights never unpickled."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pacsguard.plugins.decoders import runtime

torch = pytest.importorskip("torch")


def _blocked(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where torch and safetensors cannot be imported."""
    prelude = "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120)


def test_without_torch_the_daemon_and_the_plugins_import_and_say_what_is_missing():
    r = _blocked("""
        from pacsguard.daemon.plugins import collect, get_plugin_manager
        from pacsguard.plugins.decoders import runtime
        reg = collect(get_plugin_manager(entry_points=False))
        print(runtime.missing(), runtime.describe_device("auto"))
        assert "torch" not in {k for k, v in sys.modules.items() if v is not None}
    """)
    assert r.returncode == 0, r.stderr
    assert "['torch==2.13.0', 'safetensors>=0.4']" in r.stdout
    assert "unavailable: needs torch==2.13.0, safetensors>=0.4 (pip install pacsguard[gpu])" in r.stdout


def test_devices_resolve_once_and_cuda_is_refused_where_there_is_none():
    assert runtime.select_device("cpu") == torch.device("cpu")
    assert runtime.select_device("auto") is runtime.select_device("auto")  # chosen once
    if torch.cuda.is_available():
        assert runtime.select_device("auto").type == "cuda"
        pytest.skip("a CUDA device is present: the refusal cannot be shown here")
    assert runtime.select_device("auto") == torch.device("cpu")
    with pytest.raises(runtime.DeviceError, match="cuda:1"):
        runtime.select_device("cuda:1")
    assert runtime.describe_device("cuda").startswith("unavailable: device 'cuda' asked for")
    assert runtime.describe_device("auto") == "cpu (no CUDA device)"


@pytest.fixture
def weights_package(tmp_path, monkeypatch):
    """A package on sys.path holding a safetensors file (and a pickle, which is never read)."""
    from safetensors.torch import save_file

    pkg = tmp_path / "acme_weights"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    save_file({"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(2)}, str(pkg / "tiny.safetensors"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "acme_weights"
    sys.modules.pop("acme_weights", None)


def test_weights_load_from_package_data_in_eval_mode_under_inference_mode(weights_package):
    weights = runtime.read_weights(weights_package, "tiny.safetensors")
    layer = torch.nn.Linear(3, 2)
    layer = runtime.prepare(layer, weights, runtime.select_device("cpu"))
    assert not layer.training
    out = runtime.run(layer, torch.ones(1, 3))
    assert out.tolist() == [[4.0, 13.0]]  # (0+1+2)+1, (3+4+5)+1
    assert out.is_inference()


def test_weights_must_match_the_model_exactly(weights_package):
    weights = runtime.read_weights(weights_package, "tiny.safetensors")
    with pytest.raises(RuntimeError, match="size mismatch"):
        runtime.prepare(torch.nn.Linear(4, 2), weights, runtime.select_device("cpu"))


def test_a_pickled_file_is_not_accepted_as_weights(weights_package, tmp_path):
    # what torch.save writes (a pickle) is refused by the safetensors reader: never unpickled
    torch.save({"weight": torch.ones(2, 3)}, tmp_path / "acme_weights" / "evil.safetensors")
    with pytest.raises(Exception) as excinfo:
        runtime.read_weights(weights_package, "evil.safetensors")
    assert "header" in str(excinfo.value).lower() or "deserializ" in str(excinfo.value).lower()


def test_models_are_built_once_per_process():
    cache = runtime.ModelCache()
    built = []

    def build():
        built.append(1)
        return object()

    a = cache.get(("m", "cpu"), build)
    assert cache.get(("m", "cpu"), build) is a
    assert cache.get(("m", "cuda:0"), build) is not a
    assert len(built) == 2
    cache._pid = -1  # as after a fork: the child builds its own
    assert cache.get(("m", "cpu"), build) is not a
    assert len(built) == 3


def test_a_route_with_a_torch_stage_fails_at_config_check_naming_what_to_install(tmp_path, monkeypatch):
    from pacsguard.daemon.config import load_config_text
    from pacsguard.daemon.errors import ConfigError
    from pacsguard.daemon.extension import Stage
    from pacsguard.daemon.hookspecs import hookimpl
    from pacsguard.daemon.plugins import collect, get_plugin_manager

    class Model(Stage):
        """Runs a model."""

        name = "acme-model"
        dependencies = runtime.DEPENDENCIES

    class Plugin:
        @hookimpl
        def pacsguard_register_stages(self, register):
            register(Model)

    registry = collect(get_plugin_manager(entry_points=False, extra=(Plugin(),)))
    text = f"""
destinations:
  out: {{type: folder, path: {tmp_path / "out"}}}
routes:
  - {{name: r, pipeline: [acme-model: {{}}], to: [out]}}
"""
    load_config_text(text, registry)  # installed here: fine
    monkeypatch.setitem(sys.modules, "torch", None)  # as where pacsguard[gpu] is not installed
    with pytest.raises(ConfigError) as excinfo:
        load_config_text(text, registry)
    [error] = excinfo.value.errors
    assert error.startswith("routes[0].pipeline[0].acme-model")
    assert "needs torch==2.13.0 (pip install torch==2.13.0)" in error


def test_check_config_without_torch_names_what_infer_needs_and_scramble_still_works(tmp_path):
    secret = tmp_path / "vit.key"
    secret.write_text("ab" * 32)
    secret.chmod(0o600)
    base = f"""
keys: {{vit: {{secret: {secret}}}}}
destinations:
  out: {{type: folder, path: {tmp_path / "out"}}}
routes:
  - name: research
    pipeline: [{{scramble: {{key: vit, block_size: 4}}}}{{extra}}]
    to: [out]
"""
    with_infer = tmp_path / "infer.yaml"
    with_infer.write_text(base.replace("{extra}", ", {infer: {key: vit}}"))
    without = tmp_path / "scramble.yaml"
    without.write_text(base.replace("{extra}", ""))
    check = "from pacsguard.daemon.cli import main; sys.exit(main(['check-config', sys.argv[1]]))"

    r = _blocked(check, str(without))
    assert r.returncode == 0, r.stderr
    r = _blocked(check, str(with_infer))
    assert r.returncode != 0
    assert "routes[0].pipeline[1].infer: stage 'infer' needs torch==2.13.0, safetensors>=0.4" in r.stderr
    assert "pip install torch==2.13.0 safetensors>=0.4" in r.stderr
    ok = subprocess.run([sys.executable, "-m", "pacsguard.daemon.cli", "check-config", str(with_infer)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr  # with torch installed the same config is fine


def test_pacsguard_plugins_shows_the_device_of_infer_or_what_it_needs():
    listing = "from pacsguard.daemon.cli import main; sys.exit(main(['plugins']))"
    r = subprocess.run([sys.executable, "-c", "import sys\n" + listing], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(i for i, t in enumerate(r.stdout.splitlines()) if " infer " in t)
    device = r.stdout.splitlines()[line + 1].strip()
    assert device == f"device: {runtime.describe_device('auto')}"
    r = _blocked(listing)
    assert r.returncode == 0, r.stderr
    assert "(needs: torch==2.13.0, safetensors>=0.4)" in next(t for t in r.stdout.splitlines() if " infer " in t)
    assert "device:" not in r.stdout
