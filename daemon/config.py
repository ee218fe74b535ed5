"""One YAML file -> one typed, validated configuration.

Validation runs in two passes so that *every* error is reported at once, each with its
place in the file (``routes[1].match.Modality: ...``): pydantic validates the structure,
then each stage, destination and source is validated by the Options model of the plugin
that provides it (unknown names and bad option values are errors before the service
starts).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Mapping, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydicom.datadict import tag_for_keyword

from .errors import ConfigError
from .item import TRANSPORT_FACTS
from .keystore import KeyConfig, check_uses, load_keys
from .plugins import Registry
from .units import AbsPath, Duration, Size

DEFAULT_SYSTEM_PATH = Path("/etc/pacsguard/pacsguard.yaml")
ENV_VAR = "PACSGUARD_CONFIG"

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Model(BaseModel):
    # validate_default: defaults go through the same parsing as given values ("30s" -> 30.0).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --- match conditions ------------------------------------------------------------------

def _scalar(v):
    if isinstance(v, (str, int, float, bool)):
        return v
    raise ValueError("expected a single value (text or number)")


Scalar = Annotated[
    Any,
    PlainValidator(_scalar),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


def _match_kind(v):
    if isinstance(v, dict):
        return "ops"
    if isinstance(v, list):
        return "list"
    return "scalar"


class MatchOps(_Model):
    """Operators for one match key; all given operators must hold."""

    regex: Optional[str] = Field(None, description="Python regular expression, searched in the value")
    not_: Optional[MatchValue] = Field(None, alias="not", description="negates a condition")
    exists: Optional[bool] = Field(None, description="true: the attribute is present; false: absent")
    lt: Optional[Union[float, str]] = None
    le: Optional[Union[float, str]] = None
    gt: Optional[Union[float, str]] = None
    ge: Optional[Union[float, str]] = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.model_fields_set:
            raise ValueError("empty operator mapping (use regex, not, exists, lt, le, gt, ge)")
        return self


MatchValue = Annotated[
    Union[
        Annotated[Scalar, Tag("scalar")],
        Annotated[list[Scalar], Tag("list")],
        Annotated["MatchOps", Tag("ops")],
    ],
    Discriminator(_match_kind),
]
MatchOps.model_rebuild()


# --- sections ----------------------------------------------------------------------------


class SpoolConfig(_Model):
    path: AbsPath = Field(Path("pacsguard-data/spool"), description="spool folder (files + spool.db)")
    max_size: Size = Field(10 * 2**30, description="refuse intake above this much spooled data")
    retention: Duration = Field(3600.0, description="keep delivered objects this long, then delete")


class ProcessingConfig(_Model):
    workers: int = Field(2, ge=1, le=64, description="threads running route pipelines")
    batch_size: int = Field(8, ge=1, le=1024, description="objects a worker takes at once")
    worker_process: bool = Field(
        True, description="process and send in a worker process, so that receiving never contends with them"
                          " for one Python GIL (false: threads of the service process). Formerly"
                          " `delivery_process`, still accepted with a deprecation warning")
    max_inflated: Size = Field(
        256 * 2**20, ge=1 << 20, description="largest inflated size of a Deflated Explicit VR Little Endian"
                                             " object; larger ones are quarantined as deflate bombs (checked"
                                             " in bounded memory before parsing)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "delivery_process" in data:
            data = dict(data)
            old = data.pop("delivery_process")
            data.setdefault("worker_process", old)
        return data


class RetryConfig(_Model):
    initial: Duration = Field(1.0, description="delay after the first failure")
    factor: float = Field(2.0, ge=1.0, description="delay multiplier per further failure")
    max_delay: Duration = Field(300.0, description="cap on the delay")
    max_attempts: int = Field(10, ge=1, description="then the delivery is quarantined")
    jitter: float = Field(0.2, ge=0, le=1, description="random +- fraction added to each delay")


class DestinationSpec(BaseModel):
    """A destination: ``type`` picks the plugin; other keys are that type's options."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)

    type: str = Field(description="destination plugin: folder, dicom, ... (`pacsguard plugins` lists them)")
    retry: RetryConfig = Field(RetryConfig(), description="retry schedule of failed deliveries")
    parallel: int = Field(1, ge=1, le=32, description="concurrent sends to this destination")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RouteConfig(_Model):
    name: str = Field(pattern=_NAME, description="unique route name (letters, digits, _ . -): in logs, metrics, status")
    match: dict[str, MatchValue] = Field(
        default_factory=dict,
        description="conditions, all must hold (empty: matches everything): DICOM keyword or transport fact"
                    " (source, source_type, calling_ae, called_ae, calling_host) -> value, list of values,"
                    " or operators regex / not / exists / lt / le / gt / ge")
    pipeline: list[dict[str, Any]] = Field(default_factory=list, description="stages in order: [{stage-name: {options}}]")
    to: list[str] = Field(min_length=1, description="destination names")
    final: bool = Field(False, description="stop evaluating later routes when this one matches")



class PixelsConfig(_Model):
    decoder: Literal["cpu", "gpu"] = Field(
        "cpu", description="how stages get decoded pixels: cpu: pydicom's decoders; gpu: NVIDIA nvImageCodec on"
                           " the GPU (the gpu-decode plugin, pip install pacsguard[gpudecode]) for JPEG, JPEG"
                           " lossless, JPEG 2000 and HTJ2K, pydicom's decoders for the rest and whenever no GPU"
                           " is usable (`pacsguard plugins` shows which serves what)")
    device: str = Field("auto", pattern=r"^(auto|cuda|cuda:[0-9]+)$",
                        description="the CUDA device of the gpu decoder: auto or cuda (the first one) or cuda:N")


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="least severe level logged")
    format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a TTY, JSON otherwise")


class MetricsConfig(_Model):
    enabled: bool = Field(True, description="serve /metrics (Prometheus text) and /healthz over HTTP")
    host: str = Field("127.0.0.1", description="listen address of /metrics and /healthz")
    port: int = Field(9790, ge=0, le=65535, description="listen port (0: any free port, logged at start)")


class Config(_Model):
    """The whole configuration file."""

    node: Optional[dict[str, Any]] = Field(
        None, description="this DICOM network node (AE title, port, TLS, allowed callers): the 'dicom' source's options")
    watch: list[dict[str, Any]] = Field(default_factory=list, description="watched inbound folders: the 'folder' source's options")
    spool: SpoolConfig = Field(SpoolConfig(), description="the durable spool")
    processing: ProcessingConfig = Field(ProcessingConfig(), description="pipeline workers")
    keys: dict[str, KeyConfig] = Field(
        default_factory=dict, description="named keys: NAME -> where the key lives (files, never the key itself);"
                                          " stages name them")
    destinations: dict[str, DestinationSpec] = Field(default_factory=dict, description="named destinations: NAME -> {type, options}")
    routes: list[RouteConfig] = Field(default_factory=list, description="routing rules, evaluated top to bottom; every match fires")
    pixels: PixelsConfig = Field(PixelsConfig(), description="pixel decoding: CPU, or GPU where it serves")
    logging: LoggingConfig = Field(LoggingConfig(), description="log level and format")
    metrics: MetricsConfig = Field(MetricsConfig(), description="Prometheus metrics and health endpoint")
    shutdown_timeout: Duration = Field(30.0, description="on SIGTERM, wait this long for in-flight work")

    @field_validator("destinations", "keys")
    @classmethod
    def _names(cls, v, info):
        for name in v:
            if not re.match(_NAME, name):
                raise ValueError(f"{info.field_name[:-1]} name {name!r} must match {_NAME}")
        return v



# --- resolved configuration ----------------------------------------------------------


@dataclass
class StageSpec:
    name: str
    cls: type
    options: Any


@dataclass
class SourceSpec:
    name: str
    cls: type
    options: Any


@dataclass
class Loaded:
    """A validated config plus the plugin option models resolved from it."""

    config: Config
    path: Path | None
    text: str
    pipelines: dict[str, list[StageSpec]] = field(default_factory=dict)
    destination_options: dict[str, Any] = field(default_factory=dict)
    sources: list[SourceSpec] = field(default_factory=list)
    #: the loaded keys (name -> :class:`~pacsguard.daemon.keys.Key`), read-only: read once
    #: per config generation, handed to every item as ``item.keys``
    keys: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: deprecations and other things worth saying that do not refuse the file
    warnings: list[str] = field(default_factory=list)


#: old key -> (new key, note), for the deprecation warnings
_RENAMED = {("processing", "delivery_process"): "processing.worker_process (it runs processing and delivery)"}


# --- loading -------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen[key] = True
        return super().construct_mapping(node, deep)


def find_config(explicit: str | os.PathLike | None = None) -> Path | None:
    """--config, then $PACSGUARD_CONFIG, then /etc/pacsguard/pacsguard.yaml; None: embedded."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if DEFAULT_SYSTEM_PATH.exists():
        return DEFAULT_SYSTEM_PATH
    return None


def embedded_default_text() -> str:
    return resources.files("pacsguard.config").joinpath("default.yaml").read_text()


def load_config(path: Path | None, registry: Registry) -> Loaded:
    """Read and validate; raise ConfigError listing every problem."""
    label = str(path) if path else "<embedded default>"
    if path is None:
        from .cli_keys import ensure_demo_keys

        try:
            ensure_demo_keys()  # the embedded default runs out of the box: its demo keys
        except OSError as exc:
            raise ConfigError([f"keys: cannot make the embedded default's demo keys in pacsguard-data/keys"
                               f" ({exc.strerror or type(exc).__name__})"], label) from None
        text = embedded_default_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([f"cannot read config file: {exc.strerror}"], label) from None
    return load_config_text(text, registry, path=path, label=label)


def load_config_text(text: str, registry: Registry, *, path: Path | None = None, label: str = "config") -> Loaded:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {exc}"], label) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["the file must be a mapping of sections (node, watch, spool, ...)"], label)

    errors: list[tuple[tuple, str]] = []
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, ()))
    loaded = Loaded(config=config, path=path, text=text)  # type: ignore[arg-type]
    for (section, key), new in _RENAMED.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            loaded.warnings.append(f"{section}.{key} is deprecated: it is now {new}; the old name still works")
    keys, key_errors = load_keys(data.get("keys"))
    loaded.keys = MappingProxyType(keys)
    errors.extend(key_errors)
    errors.extend(_resolve_plugins(data, registry, loaded))
    if errors:
        errors.sort(key=lambda e: _line_of(root, e[0]) or 0)
        raise ConfigError(_format(errors, root), label)
    return loaded


def _resolve_plugins(data: dict, registry: Registry, loaded: Loaded) -> list[tuple[tuple, str]]:
    """Validate every plugin-provided part of the raw data, even where pass 1 failed."""
    errors: list[tuple[tuple, str]] = []

    def options_for(kind_table, kind_label, name, raw, loc):
        contrib = kind_table.get(name)
        if contrib is None:
            known = ", ".join(sorted(kind_table)) or "none"
            errors.append((loc, f"unknown {kind_label} {name!r} (known: {known})"))
            return None
        missing = contrib.cls.missing_dependencies()
        if missing:
            errors.append((loc, f"{kind_label} {name!r} needs {', '.join(missing)} (pip install {' '.join(missing)})"))
            return None
        try:
            return contrib.cls.Options.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, loc))
            return None

    # sources: watched folders, and the DICOM node
    names: set[str] = set()
    watch = data.get("watch") or []
    if isinstance(watch, list):
        for i, entry in enumerate(watch):
            if not isinstance(entry, dict):
                continue
            entry = dict(entry)
            name = entry.pop("name", None)
            opts = options_for(registry.sources, "source type", "folder", entry, ("watch", i))
            if opts is None:
                continue
            cls = registry.sources["folder"].cls
            name = name or cls.default_name(opts)
            if name in names:
                errors.append((("watch", i, "name"), f"source name {name!r} is used twice"))
            names.add(name)
            loaded.sources.append(SourceSpec(name, cls, opts))
    node = data.get("node")
    if isinstance(node, dict):
        if "dicom" not in registry.sources:
            errors.append((("node",), "no plugin provides the 'dicom' network source"))
        else:
            opts = options_for(registry.sources, "source type", "dicom", node, ("node",))
            if opts is not None:
                loaded.sources.append(SourceSpec("dicom", registry.sources["dicom"].cls, opts))

    # destinations
    dests = data.get("destinations") or {}
    if isinstance(dests, dict):
        for name, spec in dests.items():
            if not isinstance(spec, dict):
                continue
            if "type" not in spec:
                continue  # reported by pass 1
            raw = {k: v for k, v in spec.items() if k not in ("type", "retry", "parallel")}
            opts = options_for(registry.destinations, "destination type", spec["type"], raw, ("destinations", name))
            if opts is not None:
                loaded.destination_options[name] = opts

    # routes: pipelines, the keys their stages name, and destination references
    configured_keys = set(data["keys"]) if isinstance(data.get("keys"), dict) else set()
    routes = data.get("routes") or []
    route_names: set = set()
    if isinstance(routes, list):
        for i, route in enumerate(routes):
            if not isinstance(route, dict):
                continue
            rname = route.get("name")
            if isinstance(rname, str):
                if rname in route_names:
                    errors.append((("routes", i, "name"), f"route name {rname!r} is used twice"))
                route_names.add(rname)
            match = route.get("match")
            if isinstance(match, dict):
                for key in match:
                    if key not in TRANSPORT_FACTS and (not isinstance(key, str) or tag_for_keyword(key) is None):
                        errors.append((("routes", i, "match", key),
                                       f"unknown DICOM keyword or transport fact {key!r}"))
            specs: list[StageSpec] = []
            places: list[tuple] = []
            pipeline = route.get("pipeline") or []
            if isinstance(pipeline, list):
                for j, step in enumerate(pipeline):
                    loc = ("routes", i, "pipeline", j)
                    if isinstance(step, str):
                        step = {step: None}
                    if not isinstance(step, dict) or len(step) != 1:
                        errors.append((loc, "each pipeline step is a mapping with one stage name: {stage: {options}}"))
                        continue
                    (stage_name, raw), = step.items()
                    opts = options_for(registry.stages, "stage", stage_name, raw, loc + (stage_name,))
                    if opts is not None:
                        cls = registry.stages[stage_name].cls
                        specs.append(StageSpec(stage_name, cls, opts))
                        places.append(loc + (stage_name,))
                        try:
                            uses = cls.key_uses(opts)
                        except Exception as exc:  # a plugin's bug: say where
                            errors.append((loc + (stage_name,), f"stage {stage_name!r} cannot list the keys it"
                                                                f" uses ({type(exc).__name__})"))
                            continue
                        errors.extend(check_uses(stage_name, uses, loaded.keys, configured_keys,
                                                 loc + (stage_name,)))
                for n, spec in enumerate(specs):  # what a stage requires of the stages after it
                    later = [(s.name, s.cls, s.options) for s in specs[n + 1:]]
                    errors.extend((places[n], msg) for msg in spec.cls.check_pipeline(spec.options, later))
            to = route.get("to") or []
            if isinstance(to, list) and isinstance(dests, dict):
                for k, dest in enumerate(to):
                    if isinstance(dest, str) and dest in to[:k]:
                        errors.append((("routes", i, "to", k), f"destination {dest!r} is listed twice"))
                    if isinstance(dest, str) and dest not in dests:
                        known = ", ".join(sorted(dests)) or "none defined"
                        errors.append((("routes", i, "to", k), f"undefined destination {dest!r} (defined: {known})"))
            if isinstance(route.get("name"), str):
                loaded.pipelines[route["name"]] = specs
    return errors


def _pydantic_errors(exc: ValidationError, prefix: tuple) -> list[tuple[tuple, str]]:
    out = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        # Union members add their type names to the location: drop them.
        loc = tuple(p for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or p.startswith(("function-", "list[")))))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
            loc = loc[:-1]
        elif err["type"] == "missing":
            msg = f"required key {loc[-1]!r} is missing"
            loc = loc[:-1]
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append((loc, msg))
    # a union failure yields one error per member: keep the most specific, once
    seen, unique = set(), []
    for loc, msg in out:
        if (loc, msg) not in seen:
            seen.add((loc, msg))
            unique.append((loc, msg))
    return unique


_UNION_TAGS = {"scalar", "list", "ops"}


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _line_of(root, loc: tuple) -> int | None:
    node = root
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _format(errors: list[tuple[tuple, str]], root) -> list[str]:
    out = []
    for loc, msg in errors:
        line = _line_of(root, loc) if root is not None else None
        where = f" (line {line})" if line else ""
        out.append(f"{format_loc(loc)}: {msg}{where}")
    return out


# --- JSON Schema -----------------------------------------------------------------------


def json_schema(registry: Registry) -> dict:
    """The config's JSON Schema, with every registered stage's and destination's options."""
    schema = Config.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})

    def add(model) -> dict:
        sub = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        for k, v in sub.pop("$defs", {}).items():
            defs.setdefault(k, v)
        return sub

    steps = []
    for name, contrib in sorted(registry.stages.items()):
        steps.append({
            "type": "object",
            "description": contrib.cls.summary(),
            "properties": {name: add(contrib.cls.Options)},
            "required": [name],
            "additionalProperties": False,
        })
    defs["RouteConfig"]["properties"]["pipeline"]["items"] = {"oneOf": steps}

    dest_variants = []
    common = defs["DestinationSpec"]["properties"]
    for name, contrib in sorted(registry.destinations.items()):
        sub = add(contrib.cls.Options)
        props = {"type": {"const": name}, "retry": common["retry"], "parallel": common["parallel"]}
        props.update(sub.get("properties", {}))
        dest_variants.append({
            "type": "object",
            "description": contrib.cls.summary(),
            "properties": props,
            "required": ["type"] + sub.get("required", []),
            "additionalProperties": False,
        })
    schema["properties"]["destinations"]["additionalProperties"] = {"oneOf": dest_variants}

    if "folder" in registry.sources:
        sub = add(registry.sources["folder"].cls.Options)
        sub.setdefault("properties", {})["name"] = {"type": "string", "description": "source name (default: the folder's name)"}
        schema["properties"]["watch"]["items"] = sub
    if "dicom" in registry.sources:
        sub = add(registry.sources["dicom"].cls.Options)
        sub["description"] = registry.sources["dicom"].cls.summary()
        schema["properties"]["node"] = {"anyOf": [sub, {"type": "null"}]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pacsguard configuration"
    return schema


def schema_json(registry: Registry) -> str:
    return json.dumps(json_schema(registry), indent=2, sort_keys=False)
