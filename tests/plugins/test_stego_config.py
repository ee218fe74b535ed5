"""The embed and reveal stages in a config: options checked, keys checked, and a lossy
stage after embed refused."""

from __future__ import annotations

import textwrap

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.errors import ConfigError
from pacsguard.daemon.extension import Stage
from pacsguard.daemon.hookspecs import hookimpl
from pacsguard.daemon.plugins import collect, get_plugin_manager


class Squash(Stage):
    """A stage that re-encodes pixel data lossily (there is none built in)."""

    name = "squash"
    lossy = True

    def process(self, item):
        return item


class _SquashPlugin:
    @hookimpl
    def pacsguard_register_stages(self, register):
        register(Squash)


@pytest.fixture(scope="module")
def registry():
    return collect(get_plugin_manager(entry_points=False, extra=(_SquashPlugin(),)))


@pytest.fixture
def keys(tmp_path) -> str:
    path = tmp_path / "reid.key"
    path.write_bytes(x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    secret = tmp_path / "pseudo.key"
    secret.write_text("ab" * 32)
    secret.chmod(0o600)
    return (f"keys: {{reid: {{private: {path}}}, pseudo: {{secret: {secret}}}}}\n"
            "destinations: {out: {type: folder, path: unused}}\n")


def _load(text: str, registry):
    return load_config_text(text, registry)


def _errors(text: str, registry) -> str:
    with pytest.raises(ConfigError) as info:
        _load(text, registry)
    return "\n".join(info.value.errors)


def test_an_embed_and_reveal_route_loads(keys, registry):
    loaded = _load(keys + textwrap.dedent("""
        routes:
          - {name: hide, pipeline: [{embed: {recipients: [reid], attributes: [PatientName, PatientID]}}], to: [out]}
          - {name: show, pipeline: [{reveal: {key: reid}}], to: [out]}
        """), registry)
    (spec,) = loaded.pipelines["hide"]
    assert spec.options.method == "reversible" and spec.options.max_threshold == 32


@pytest.mark.parametrize("options, message", [
    ("{method: lsb, recipients: [reid]}", "reversible: false"),
    ("{method: reversible, reversible: false, recipients: [reid]}", "for method lsb only"),
    ("{recipients: [reid, reid]}", "named twice"),
    ("{recipients: []}", "at least 1"),
    ("{recipients: [reid], attributes: [PixelData]}", "pixel data"),
    ("{recipients: [reid], lsb_bits: 5}", "less than or equal to 4"),
    ("{recipients: [pseudo]}", "pseudo"),
    ("{recipients: [reid], on_no_capacity: attributes}", "reid"),  # CMS: RSA with a certificate
])
def test_bad_embed_options_are_config_errors(keys, registry, options, message):
    errors = _errors(keys + f"routes: [{{name: r, pipeline: [{{embed: {options}}}], to: [out]}}]\n", registry)
    assert "routes[0].pipeline[0].embed" in errors and message in errors, errors


def test_reveal_needs_one_of_key_or_keys(keys, registry):
    assert "give key or keys" in _errors(keys + "routes: [{name: r, pipeline: [{reveal: {}}], to: [out]}]\n", registry)


def test_a_lossy_stage_after_embed_is_a_config_error(keys, registry):
    errors = _errors(keys + "routes: [{name: r, pipeline: [{embed: {recipients: [reid]}}, {set-attributes: {}},"
                            " {squash: {}}], to: [out]}]\n", registry)
    assert "routes[0].pipeline[0].embed" in errors
    assert "stage 'squash' compresses pixel data lossily after embed" in errors
    _load(keys + "routes: [{name: r, pipeline: [{squash: {}}, {embed: {recipients: [reid]}}], to: [out]}]\n", registry)
