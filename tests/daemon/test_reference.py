"""The README's configuration reference is generated from the models: it must be current."""

from __future__ import annotations

from pathlib import Path

from pacsguard.daemon.config import Config
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.reference import readme_section, reference

REPO = Path(__file__).resolve().parents[2]


def test_readme_reference_is_current():
    registry = collect(get_plugin_manager(entry_points=False))
    section = readme_section((REPO / "README.md").read_text())
    assert section is not None, "README.md lost its config-reference markers"
    assert section == reference(registry), (
        "README.md's configuration reference is stale: run `pacsguard config reference --write README.md`")


def test_reference_lists_every_key():
    registry = collect(get_plugin_manager(entry_points=False))
    text = reference(registry)
    for name in Config.model_fields:
        assert f"| `{name}` |" in text
    for kind, prefix in (("stages", None), ("destinations", "destinations.NAME."), ("sources", None)):
        for stage_name, contrib in registry.kind(kind).items():
            for field, info in contrib.cls.Options.model_fields.items():
                assert f"{info.alias or field}` |" in text, (kind, stage_name, field)
    assert "| `spool.max_size` | size | `10GiB` |" in text
    assert "| `shutdown_timeout` | duration | `30s` |" in text
