"""The plugin manager: built-ins and third-party plugins go through the same door."""

from __future__ import annotations

import json
import subprocess
import sys

import pluggy
import pytest

from pacsguard.daemon import hookspecs
from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.errors import ConfigError, PluginError
from pacsguard.daemon.extension import Stage
from pacsguard.daemon.hookspecs import hookimpl
from pacsguard.daemon.plugins import DEFAULT_PLUGINS, collect, describe, get_plugin_manager
from pacsguard.plugins.folder import FolderDestination, FolderSource
from pacsguard.plugins.setattrs import SetAttributes


class Plugin:
    """A stand-in third-party plugin: an object with @hookimpl methods and a name."""

    def __init__(self, name: str, *, stages=(), destinations=()):
        self.__name__ = name  # pluggy's canonical name for the plugin
        self.stages = stages
        self.destinations = destinations

    @hookimpl
    def pacsguard_register_stages(self, register):
        for cls in self.stages:
            register(cls)

    @hookimpl
    def pacsguard_register_destinations(self, register):
        for cls in self.destinations:
            register(cls)


class Upper(Stage):
    """Upper-case the institution name."""

    name = "acme-upper"

    def process(self, item):
        return item


class Impostor(Stage):
    """Claims a built-in's name."""

    name = "set-attributes"


class Nameless(Stage):
    """Forgot its name."""


class NeedsMissingPackage(Stage):
    """Needs a package that is not installed."""

    name = "acme-heavy"
    dependencies = {"surely_not_installed_pkg": "surely-not-installed-pkg"}


# --- registration ------------------------------------------------------------------------


def test_every_default_plugin_is_registered():
    pm = get_plugin_manager()
    names = dict(pm.list_name_plugin())
    for modname in DEFAULT_PLUGINS:
        assert modname in names, modname
        assert names[modname] is sys.modules[modname]
    assert pm.hook.pacsguard_register_stages.spec is not None  # hookspecs were added


def test_default_plugins_are_registered_without_entry_points_too():
    pm = get_plugin_manager(entry_points=False)
    assert [n for n, _ in pm.list_name_plugin() if n in DEFAULT_PLUGINS] == list(DEFAULT_PLUGINS)


def test_collect_records_what_each_builtin_contributes():
    registry = collect(get_plugin_manager())
    stage = registry.stages["set-attributes"]
    assert stage.cls is SetAttributes and stage.plugin == "pacsguard.plugins.setattrs" and stage.name == "set-attributes"
    dest = registry.destinations["folder"]
    assert dest.cls is FolderDestination and dest.plugin == "pacsguard.plugins.folder"
    src = registry.sources["folder"]
    assert src.cls is FolderSource and src.plugin == "pacsguard.plugins.folder"
    assert registry.kind("stages") is registry.stages


def test_third_party_stage_shows_up_in_collect_and_describe():
    plugin = Plugin("acme", stages=(Upper,))
    pm = get_plugin_manager(extra=(plugin,))
    registry = collect(pm)
    assert registry.stages["acme-upper"].cls is Upper
    assert registry.stages["acme-upper"].plugin == "acme"
    assert registry.stages["set-attributes"].plugin == "pacsguard.plugins.setattrs"  # built-ins untouched

    entries = {e["name"]: e for e in describe(pm, registry)}
    acme = entries["acme"]
    assert acme["origin"] == "registered at start"
    assert acme["stages"] == ["acme-upper"]
    assert acme["destinations"] == [] and acme["sources"] == []
    assert acme["hooks"] == ["pacsguard_register_destinations", "pacsguard_register_stages"]
    assert entries["pacsguard.plugins.setattrs"]["stages"] == ["set-attributes"]
    assert "set-attributes" not in acme["stages"]
    assert hookspecs.__name__ not in entries


def test_the_same_stage_name_twice_names_both_plugins():
    pm = get_plugin_manager(extra=(Plugin("acme", stages=(Impostor,)),))
    with pytest.raises(PluginError) as excinfo:
        collect(pm)
    message = str(excinfo.value)
    assert "'set-attributes' registered twice" in message
    assert "'pacsguard.plugins.setattrs'" in message and "'acme'" in message


def test_two_third_party_plugins_clashing_are_both_named():
    pm = get_plugin_manager(extra=(Plugin("acme", stages=(Upper,)), Plugin("globex", stages=(Upper,))))
    with pytest.raises(PluginError, match=r"stage 'acme-upper' registered twice: by 'acme' and 'globex'"):
        collect(pm)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (Plugin("acme", stages=(object(),)), "not a Stage subclass"),
        (Plugin("acme", stages=(dict,)), "not a Stage subclass"),
        (Plugin("acme", stages=(FolderDestination,)), "not a Stage subclass"),
        (Plugin("acme", destinations=(Upper,)), "not a Destination subclass"),
        (Plugin("acme", stages=(Nameless,)), "Nameless has no name"),
    ],
    ids=["instance", "foreign-class", "destination-as-stage", "stage-as-destination", "no-name"],
)
def test_registering_something_else_is_a_plugin_error(plugin, message):
    pm = get_plugin_manager(extra=(plugin,))
    with pytest.raises(PluginError, match=message) as excinfo:
        collect(pm)
    assert "'acme'" in str(excinfo.value)


def test_misspelt_hook_fails_at_start():
    class Misspelt:
        @hookimpl
        def pacsguard_register_stagez(self, register):
            register(Upper)

    with pytest.raises(pluggy.PluginValidationError, match="pacsguard_register_stagez"):
        get_plugin_manager(extra=(Misspelt(),))


def test_hook_with_wrong_argument_names_fails_at_start():
    class WrongArgs:
        @hookimpl
        def pacsguard_register_stages(self, reg):
            reg(Upper)

    with pytest.raises(pluggy.PluginValidationError, match="reg"):
        get_plugin_manager(extra=(WrongArgs(),))


def test_missing_dependency_is_a_config_error_naming_the_package(tmp_path):
    assert NeedsMissingPackage.missing_dependencies() == ["surely-not-installed-pkg"]
    registry = collect(get_plugin_manager(extra=(Plugin("acme", stages=(NeedsMissingPackage,)),)))
    text = f"""
destinations:
  out:
    type: folder
    path: {tmp_path / "out"}
routes:
  - name: heavy
    pipeline:
      - acme-heavy: {{}}
    to: [out]
"""
    with pytest.raises(ConfigError) as excinfo:
        load_config_text(text, registry)
    errors = excinfo.value.errors
    assert len(errors) == 1, errors
    assert "acme-heavy" in errors[0]
    assert "pip install surely-not-installed-pkg" in errors[0]
    assert errors[0].startswith("routes[0].pipeline[0].acme-heavy")


def test_installed_dependencies_are_not_reported(tmp_path):
    class NeedsPydicom(Stage):
        """Needs pydicom, which is installed."""

        name = "acme-light"
        dependencies = {"pydicom": "pydicom"}

    registry = collect(get_plugin_manager(extra=(Plugin("acme", stages=(NeedsPydicom,)),)))
    text = f"""
destinations:
  out: {{type: folder, path: {tmp_path / "out"}}}
routes:
  - {{name: light, pipeline: [{{acme-light: {{}}}}], to: [out]}}
"""
    loaded = load_config_text(text, registry)
    assert [s.cls for s in loaded.pipelines["light"]] == [NeedsPydicom]


def test_unknown_stage_lists_the_known_ones(tmp_path):
    registry = collect(get_plugin_manager(extra=(Plugin("acme", stages=(Upper,)),)))
    text = f"""
destinations:
  out: {{type: folder, path: {tmp_path / "out"}}}
routes:
  - {{name: r, pipeline: [{{acme-uper: {{}}}}], to: [out]}}
"""
    with pytest.raises(ConfigError) as excinfo:
        load_config_text(text, registry)
    assert len(excinfo.value.errors) == 1, excinfo.value.errors
    assert "unknown stage 'acme-uper' (known: acme-upper, decrypt, deidentify, embed, encrypt, infer, neural-encrypt, neural-restore, reveal, roi, scramble, set-attributes, unscramble)" in excinfo.value.errors[0]


# --- the CLI -----------------------------------------------------------------------------


def test_cli_plugins_json_lists_the_builtins(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pacsguard.daemon.cli", "plugins", "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    assert set(DEFAULT_PLUGINS) <= set(entries)
    for modname in DEFAULT_PLUGINS:
        assert entries[modname]["origin"] == "built-in"
    assert entries["pacsguard.plugins.setattrs"]["stages"] == ["set-attributes"]
    assert entries["pacsguard.plugins.setattrs"]["hooks"] == ["pacsguard_register_stages"]
    assert entries["pacsguard.plugins.folder"]["destinations"] == ["folder"]
    assert entries["pacsguard.plugins.folder"]["sources"] == ["folder"]
    assert entries["pacsguard.daemon.pixels"]["hooks"] == ["pacsguard_decode_pixels", "pacsguard_decode_pixels_batch"]
    assert entries["pacsguard.plugins.folder"]["module"].endswith("__init__.py")
