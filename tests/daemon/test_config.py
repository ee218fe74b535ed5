"""Configuration loading and validation: every error at once, each with its place and line."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from pacsguard.daemon import config as config_mod
from pacsguard.daemon.config import (
    embedded_default_text,
    find_config,
    json_schema,
    load_config,
    load_config_text,
    schema_json,
)
from pacsguard.daemon.errors import ConfigError
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.units import parse_duration, parse_size

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.yaml"
_PLACED = re.compile(r"^(?P<place>[^:]+?): (?P<msg>.*) \(line (?P<line>\d+)\)$", re.S)


@pytest.fixture(scope="module")
def registry():
    return collect(get_plugin_manager())


def _errors(text: str, registry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), registry)
    assert info.value.errors, "a ConfigError must list its problems"
    return info.value.errors


def _placed(errors: list[str]) -> dict[str, tuple[str, int]]:
    """place -> (message, line) for errors of the form 'place: message (line N)'."""
    out = {}
    for err in errors:
        m = _PLACED.match(err)
        assert m, f"error without place and line: {err!r}"
        assert m["place"] not in out, f"place reported twice: {err!r}"
        out[m["place"]] = (m["msg"], int(m["line"]))
    return out


# --- valid files ----------------------------------------------------------------------


def test_embedded_default_validates(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = load_config(None, registry)
    cfg = loaded.config
    assert loaded.path is None
    assert loaded.text == embedded_default_text() == (REPO / "config" / "default.yaml").read_text()
    assert [r.name for r in cfg.routes] == ["images", "other"]
    assert cfg.routes[1].match == {} and cfg.routes[0].to == cfg.routes[1].to == ["outbound"]
    assert cfg.destinations["outbound"].type == "folder"
    assert cfg.spool.max_size == 2 * 2**30 and cfg.spool.retention == 3600.0
    assert cfg.spool.path == tmp_path / "pacsguard-data" / "spool"
    assert [s.name for s in loaded.pipelines["images"]] == ["deidentify", "embed", "encrypt"]
    embed, encrypt = loaded.pipelines["images"][1:]
    assert (embed.options.method, embed.options.recipients, embed.options.on_no_capacity) == (
        "reversible", ["demo-partner"], "attributes")
    assert (encrypt.options.scope, encrypt.options.recipients) == ("pixels", ["demo-partner"])
    assert [s.name for s in loaded.pipelines["other"]] == ["deidentify", "encrypt"]
    assert [s.name for s in loaded.sources] == ["inbound"]
    assert loaded.destination_options["outbound"].path == tmp_path / "pacsguard-data" / "outbound"


def test_example_yaml_validates(registry):
    loaded = load_config(EXAMPLE, registry)
    cfg = loaded.config
    assert loaded.path == EXAMPLE
    assert [(r.name, r.final, r.to) for r in cfg.routes] == [
        ("research-ct", True, ["research-share"]),
        ("archive-everything", False, ["archive", "pacs"]),
    ]
    assert set(cfg.routes[0].match) == {"Modality", "StudyDescription", "InstitutionName", "SliceThickness",
                                        "PatientIdentityRemoved", "source"}
    assert sorted(cfg.destinations) == ["archive", "pacs", "research-share"]
    assert [c.ae_title for c in loaded.sources[1].options.allowed_callers] == ["CT_SCANNER_1", "MR_ROOM_2",
                                                                             "WORKSTATION"]
    share = cfg.destinations["research-share"]
    assert share.retry.max_delay == 300.0 and share.retry.initial == 1.0 and share.parallel == 1
    assert cfg.spool.max_size == 50 * 2**30
    assert cfg.shutdown_timeout == 30.0
    assert loaded.sources[0].name == "modality-drop" and loaded.sources[0].options.settle == 2.0
    assert loaded.pipelines["research-ct"][0].options.remove == ["OtherPatientIDs"]
    assert loaded.pipelines["archive-everything"] == []
    empty = load_config_text("", registry).config  # an empty file is a valid, empty config
    assert empty.routes == [] and empty.destinations == {}


def test_example_yaml_shows_every_key(registry):
    """The annotated example names every key of the reference (commented out where a key
    needs files that must exist, like TLS certificates)."""
    from pacsguard.daemon.reference import reference

    text = EXAMPLE.read_text()
    keys = {line.split("`")[1] for line in reference(registry).splitlines() if line.startswith("| `")}
    leaves = {k.replace("[]", "").rsplit(".", 1)[-1] for k in keys}
    missing = sorted(leaf for leaf in leaves if not re.search(rf"(^|[\s{{,])(- )?{re.escape(leaf)}:", text, re.M))
    assert len(leaves) > 40 and missing == []


def test_defaults_are_parsed_like_given_values(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = load_config(None, registry).config
    assert default.shutdown_timeout == 30.0  # embedded default has no shutdown_timeout
    assert default.destinations["outbound"].retry.max_delay == 300.0  # nor a retry section
    bare = load_config_text("processing: {workers: 1}\n", registry).config
    assert bare.spool.max_size == 10 * 2**30
    assert bare.spool.retention == 3600.0
    assert bare.spool.path.is_absolute()


# --- errors: all at once, each with its place and line ------------------------------

MANY_ERRORS = """\
watch:
  - {path: /tmp/pg-in, bogus: 1}
destinations:
  out:
    type: folder
    path: /tmp/pg-out
    template: "{NotAKeyword}/x.dcm"
  weird:
    type: ftp
routes:
  - name: first
    match:
      Modality: CT
    pipeline:
      - set-attributes:
          set: {PatientID: "%s"}
      - watermark: {}
    to: [out, nowhere]
  - name: first
    match:
      Modality: {}
      StudyDescription: {regex: "("}
      NotAKeyword: x
    to: [out]
""" % ("9" * 70)


def test_every_error_reported_with_place_and_line(registry):
    errors = _errors(MANY_ERRORS, registry)
    placed = _placed(errors)
    assert {place: line for place, (_, line) in placed.items()} == {
        "watch[0]": 2,
        "destinations.out.template": 7,
        "destinations.weird": 9,
        "routes[0].pipeline[0].set-attributes.set": 16,
        "routes[0].pipeline[1].watermark": 17,
        "routes[0].to[1]": 18,
        "routes[1].name": 19,
        "routes[1].match.Modality": 21,
        "routes[1].match.StudyDescription.regex": 22,
        "routes[1].match.NotAKeyword": 23,
    }
    msg = {place: m for place, (m, _) in placed.items()}
    assert msg["watch[0]"] == "unknown key 'bogus'"
    assert "'{NotAKeyword}' is not a DICOM keyword" in msg["destinations.out.template"]
    assert msg["destinations.weird"].startswith("unknown destination type 'ftp' (known: dicom, folder")
    assert msg["routes[0].pipeline[0].set-attributes.set"].startswith("PatientID:")
    assert "64" in msg["routes[0].pipeline[0].set-attributes.set"]  # LO holds at most 64 characters
    assert msg["routes[0].pipeline[1].watermark"].startswith("unknown stage 'watermark' (known: ")
    assert msg["routes[0].to[1]"].startswith("undefined destination 'nowhere' (defined: out, weird)")
    assert msg["routes[1].name"] == "route name 'first' is used twice"
    assert msg["routes[1].match.Modality"].startswith("empty operator mapping")
    assert msg["routes[1].match.StudyDescription.regex"].startswith("invalid regular expression")
    assert msg["routes[1].match.NotAKeyword"] == "unknown DICOM keyword or transport fact 'NotAKeyword'"
    lines = [line for _, line in placed.values()]
    assert lines == sorted(lines), "errors are listed in file order"


def test_config_error_message_counts_and_lists_errors(registry):
    with pytest.raises(ConfigError) as info:
        load_config_text(MANY_ERRORS, registry, label="site.yaml")
    text = str(info.value)
    assert text.startswith("site.yaml: 10 error(s)\n")
    assert "routes[0].to[1]: undefined destination 'nowhere'" in text


DEST = "destinations:\n  out: {type: folder, path: /tmp/pg-out}\n"


@pytest.mark.parametrize("text, place, fragment, line", [
    (DEST + "routes:\n  - name: r\n    pipeline: [{blur: {}}]\n    to: [out]\n",
     "routes[0].pipeline[0].blur", "unknown stage 'blur'", 5),
    (DEST + "routes:\n  - name: r\n    pipeline: [set-attributes]\n    to: [out]\n",
     "routes[0].pipeline[0].set-attributes", "nothing to do", 5),
    (DEST + "routes:\n  - name: r\n    pipeline:\n      - set-attributes: {set: {Modality: ABCDEFGHIJKLMNOPQ}}\n"
     "    to: [out]\n", "routes[0].pipeline[0].set-attributes.set", "Modality:", 6),
    (DEST + "routes:\n  - name: r\n    pipeline:\n      - set-attributes: {remove: [NoSuchThing]}\n    to: [out]\n",
     "routes[0].pipeline[0].set-attributes.remove", "'NoSuchThing' is not a DICOM keyword", 6),
    ("destinations:\n  out:\n    type: s3\n    bucket: x\n", "destinations.out", "unknown destination type 's3'", 3),
    ("destinations:\n  out:\n    path: /tmp/x\n", "destinations.out", "required key 'type' is missing", 3),
    ("destinations:\n  out:\n    type: folder\n    path: /o\n    retry: {max_delay: soon}\n",
     "destinations.out.retry.max_delay", "invalid duration 'soon'", 5),
    (DEST + "routes:\n  - {name: r, to: [out, gone]}\n", "routes[0].to[1]", "undefined destination 'gone'", 4),
    (DEST + "routes:\n  - {name: r, to: [out, out]}\n", "routes[0].to[1]", "destination 'out' is listed twice", 4),
    (DEST + "routes:\n  - name: r\n    match: {Modalty: CT}\n    to: [out]\n",
     "routes[0].match.Modalty", "unknown DICOM keyword or transport fact 'Modalty'", 5),
    (DEST + "routes:\n  - name: r\n    match:\n      StudyDescription: {regex: '[unclosed'}\n    to: [out]\n",
     "routes[0].match.StudyDescription.regex", "invalid regular expression", 6),
    (DEST + "routes:\n  - name: r\n    match:\n      Modality: {equals: CT}\n    to: [out]\n",
     "routes[0].match.Modality", "unknown key 'equals'", 6),
    (DEST + "routes:\n  - {name: r, to: [out]}\n  - {name: s, to: [out]}\n  - {name: r, to: [out]}\n",
     "routes[2].name", "route name 'r' is used twice", 6),
    (DEST + "routes:\n  - {name: r}\n", "routes[0]", "required key 'to' is missing", 4),
    ("watch:\n  - {path: /tmp/a}\n  - {path: /tmp/b/a}\n", "watch[1].name", "source name 'a' is used twice", 3),
    ("watch:\n  - {name: w, path: /tmp/w, settle: later}\n", "watch[0].settle", "invalid duration", 2),
    ("node:\n  ae_title: X\n  port: 99999\n", "node.port", "less than or equal to 65535", 3),
    ("spool:\n  max_size: lots\n", "spool.max_size", "invalid size 'lots'", 2),
    ("logging: {level: verbose}\nsurprise: 1\n", "(top level)", "unknown key 'surprise'", 1),
])
def test_single_error_place_and_line(registry, text, place, fragment, line):
    placed = _placed(_errors(text, registry))
    assert place in placed, f"{place} not in {list(placed)}"
    message, got_line = placed[place]
    assert fragment in message
    assert got_line == line


def test_duplicate_yaml_key_is_an_error(registry):
    errors = _errors("spool:\n  path: /a\nmetrics: {}\nspool:\n  path: /b\n", registry)
    assert len(errors) == 1
    assert errors[0].startswith("invalid YAML")
    assert "duplicate key 'spool'" in errors[0] and "line 4" in errors[0]
    nested = _errors(DEST + "routes:\n  - name: r\n    to: [out]\n    name: s\n", registry)
    assert "duplicate key 'name'" in nested[0] and "line 6" in nested[0]


def test_invalid_yaml_syntax(registry):
    errors = _errors("routes:\n  - name: r\n    to: [out\n", registry)
    assert len(errors) == 1 and errors[0].startswith("invalid YAML:")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(registry, text):
    assert _errors(text, registry) == ["the file must be a mapping of sections (node, watch, spool, ...)"]


def test_unreadable_file_is_a_config_error(registry, tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, registry)
    assert info.value.source == str(missing)
    assert info.value.errors[0].startswith("cannot read config file")


def test_file_errors_are_labelled_with_the_path(registry, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("processing: {workers: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: 1 error(s)")
    assert info.value.errors[0].startswith("processing.workers: ") and info.value.errors[0].endswith("(line 1)")


# --- units and paths ---------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5h", 5400.0),
    (" 30 s ", 30.0), ("45", 45.0), (10, 10.0), (0.25, 0.25), (0, 0.0),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "soon", "5 minutes", "1h30m", "-1s", "1.2.3s", "5M", True, -1])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value, size", [
    ("10GiB", 10 * 2**30), ("500MB", 500_000_000), ("512MiB", 512 * 2**20), ("2TiB", 2 * 2**40),
    ("1kb", 1000), ("1KiB", 1024), ("100B", 100), ("1.5GB", 1_500_000_000), ("4096", 4096), (1024, 1024),
])
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "big", "10 XB", "10GiBs", "-5MB", "1,5GB", False, -1])
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_units_parsed_in_config(registry):
    cfg = load_config_text("destinations:\n  out:\n    type: folder\n    path: /o\n"
                           "    retry: {initial: 250ms, max_delay: 2m}\n"
                           "spool: {path: /s, max_size: 500MB, retention: 1d}\nshutdown_timeout: 5m\n",
                           registry).config
    assert cfg.spool.max_size == 500_000_000 and cfg.spool.retention == 86400.0
    assert cfg.shutdown_timeout == 300.0
    assert (cfg.destinations["out"].retry.initial, cfg.destinations["out"].retry.max_delay) == (0.25, 120.0)


def test_relative_paths_are_made_absolute(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    loaded = load_config_text(
        "watch:\n  - {path: drop/in}\nspool: {path: data/spool}\n"
        "destinations:\n  out: {type: folder, path: ~/outbound}\n  abs: {type: folder, path: /srv/x}\n", registry)
    assert loaded.config.spool.path == tmp_path / "data" / "spool"
    assert loaded.sources[0].options.path == tmp_path / "drop" / "in"
    assert loaded.sources[0].name == "in"
    assert loaded.destination_options["out"].path == tmp_path / "home" / "outbound"
    assert loaded.destination_options["abs"].path == Path("/srv/x")


# --- JSON Schema ----------------------------------------------------------------------


def test_json_schema_lists_plugin_contributions(registry):
    schema = json_schema(registry)
    assert isinstance(schema, dict)
    assert json.loads(schema_json(registry)) == json.loads(json.dumps(schema))
    steps = schema["$defs"]["RouteConfig"]["properties"]["pipeline"]["items"]["oneOf"]
    setattrs = [s for s in steps if "set-attributes" in s["properties"]]
    assert len(setattrs) == 1 and setattrs[0]["required"] == ["set-attributes"]
    assert setattrs[0]["additionalProperties"] is False
    variants = schema["properties"]["destinations"]["additionalProperties"]["oneOf"]
    folder = [v for v in variants if v["properties"]["type"] == {"const": "folder"}]
    assert len(folder) == 1
    assert "path" in folder[0]["required"] and "template" in folder[0]["properties"]
    assert {"name", "path"} <= set(schema["properties"]["watch"]["items"]["properties"])


def test_embedded_default_validates_against_json_schema(registry):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(json_schema(registry))
    default = yaml.safe_load(embedded_default_text())
    assert list(validator.iter_errors(default)) == []
    default["routes"][0]["pipeline"].append({"watermark": {}})
    assert list(validator.iter_errors(default)), "an unknown stage must fail the schema"


# --- find_config ------------------------------------------------------------------------


def test_find_config_explicit_path_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("PACSGUARD_CONFIG", str(tmp_path / "env.yaml"))
    assert find_config(tmp_path / "cli.yaml") == tmp_path / "cli.yaml"
    assert find_config(str(tmp_path / "cli.yaml")) == tmp_path / "cli.yaml"


def test_find_config_environment_then_system_then_none(monkeypatch, tmp_path):
    system = tmp_path / "etc" / "pacsguard.yaml"
    monkeypatch.setattr(config_mod, "DEFAULT_SYSTEM_PATH", system)
    monkeypatch.setenv("PACSGUARD_CONFIG", str(tmp_path / "env.yaml"))
    assert find_config() == tmp_path / "env.yaml"
    assert find_config(None) == tmp_path / "env.yaml"
    monkeypatch.delenv("PACSGUARD_CONFIG")
    assert find_config() is None
    monkeypatch.setenv("PACSGUARD_CONFIG", "")
    assert find_config() is None
    system.parent.mkdir()
    system.write_text("{}\n")
    assert find_config() == system


def test_find_config_none_without_system_file(monkeypatch):
    monkeypatch.delenv("PACSGUARD_CONFIG", raising=False)
    etc = Path("/etc/pacsguard/pacsguard.yaml")
    assert config_mod.DEFAULT_SYSTEM_PATH == etc and find_config() == (etc if etc.exists() else None)


def test_the_old_name_of_worker_process_still_works_with_a_deprecation(registry):
    loaded = config_mod.load_config_text("processing: {delivery_process: false}\n", registry)
    assert loaded.config.processing.worker_process is False
    assert loaded.warnings == ["processing.delivery_process is deprecated: it is now processing.worker_process"
                               " (it runs processing and delivery); the old name still works"]
    new = config_mod.load_config_text("processing: {worker_process: false}\n", registry)
    assert new.config.processing.worker_process is False and new.warnings == []


def test_check_config_prints_the_deprecation(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "old.yaml"
    path.write_text("processing: {delivery_process: true}\n")
    out = subprocess.run([sys.executable, "-m", "pacsguard.daemon.cli", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "warning: processing.delivery_process is deprecated" in out.stderr


def test_the_worker_process_module_does_not_import_the_service():
    """(The import circle between service.py and the worker's module is gone.)"""
    import subprocess
    import sys

    code = ("import sys, pacsguard.daemon.worker_process, pacsguard.daemon.runtime;"
            " sys.exit('pacsguard.daemon.service' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
