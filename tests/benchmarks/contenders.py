"""The contenders: what sits between the sender and the sink.

Each is started fresh (empty spool / database) for every measured run, on free ports, in
its own work folder, and delivers to the same :class:`~.sink.Sink`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from .common import peers
from .keys import NAMES, config_section
from .sink import SINK_AET

ORTHANC_LUA = """\
-- auto-routing: forward each received instance to the sink
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'sink')
  {delete}
end
"""

#: The "with a stage" route: a header-only change (the pixel data is copied raw), the
#: cheapest stage; the column of that name in README.md's run history.
STAGE_PIPELINE = [{"set-attributes": {"set": {"InstitutionName": "Benchmark Hospital", "ImageComments": "via pacsguard"},
                                      "set_if_missing": {"BodyPartExamined": "UNKNOWN"},
                                      "remove": ["OtherPatientIDs"]}}]
#: The "with encryption" route: the pixel data encrypted for one recipient ({recipient}: a
#: key of the run's key store, see keys.py). ``--pipeline FILE`` replaces it.
ENCRYPT_PIPELINE = [{"encrypt": {"scope": "pixels", "recipients": ["{recipient}"]}}]
#: de-identification, then the pixel data encrypted (the research-export route)
DEID_ENCRYPT_PIPELINE = [{"deidentify": {"key": "{secret}"}}, *ENCRYPT_PIPELINE]
#: full protection: de-identified, the original values embedded reversibly in the pixels for
#: the re-identification key holder, then the pixel data encrypted
FULL_PIPELINE = [{"deidentify": {"key": "{secret}"}},
                 {"embed": {"recipients": ["{rsa}"], "on_no_capacity": "attributes"}},  # CMS fallback: RSA
                 *ENCRYPT_PIPELINE]

#: Option sets to try, per stage name, first match wins (the stage micro-benchmarks). Kept
#: broad for the stages still being written; placeholders are keys.py's.
STAGE_OPTION_CANDIDATES: dict[str, list[dict]] = {
    "set-attributes": [STAGE_PIPELINE[0]["set-attributes"]],
    "deidentify": [{}, {"key": "{secret}"}, {"secret": "{secret}"}, {"pseudonym_key": "{secret}"},
                   {"profile": "basic"}, {"key": "{secret}", "profile": "basic"}],
    "embed": [{}, {"key": "{secret}"}, {"recipient": "{recipient}"}, {"recipients": ["{recipient}"]},
              {"method": "reversible"}, {"method": "reversible", "key": "{secret}"},
              {"method": "reversible", "recipients": ["{recipient}"]}],
    "reveal": [{}, {"key": "{secret}"}, {"key": "{recipient}"}, {"method": "reversible"},
               {"method": "reversible", "key": "{secret}"}, {"method": "reversible", "key": "{recipient}"}],
    "encrypt": [ENCRYPT_PIPELINE[0]["encrypt"]],
    "decrypt": [{"scope": "pixels", "key": "{recipient}"}],
    "scramble": [{}, {"key": "{secret}"}, {"block_size": 16, "key": "{secret}"}],
    "unscramble": [{}, {"key": "{secret}"}, {"block_size": 16, "key": "{secret}"}],
    # experimental, 32 x 32 8-bit only: the CT slices are refused (the count says so)
    "neural-encrypt": [{"key": "{secret}", "device": "cpu"}],
    "neural-restore": [{"key": "{secret}", "device": "cpu"}],
}


def fill(value, keys: dict):
    """Replace "{name}" placeholders with key names or key file paths (keys.py), recursively."""
    if isinstance(value, str):
        for k, v in keys.items():
            value = value.replace("{" + k + "}", str(v))
        return value
    if isinstance(value, list):
        return [fill(v, keys) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, keys) for k, v in value.items()}
    return value


def stage_options(stage_cls, keys: dict) -> tuple[dict | None, str | None]:
    """The first candidate option set ``stage_cls.Options`` accepts: (options, None), or
    (None, why none did)."""
    errors = []
    for cand in STAGE_OPTION_CANDIDATES.get(stage_cls.name, [{}]):
        opts = fill(cand, keys)
        try:
            stage_cls.Options(**opts)
            return opts, None
        except Exception as exc:  # pydantic ValidationError and friends
            errors.append(str(exc).splitlines()[0])
    return None, f"no known option set validates ({'; '.join(errors[:2])})"


class Contender:
    key = ""
    label = ""
    kind = "dicom"          # "dicom": receives C-STORE; "folder": files dropped into a folder
    called_aet = ""
    is_limit = False
    is_peer = False

    def __init__(self):
        self.note = ""
        self.port: int | None = None
        self.inbound: Path | None = None

    def start(self, workdir: Path, sink) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    @property
    def service_pid(self) -> int | None:
        return None

    def died(self) -> str | None:
        """A reason when the service process has exited, else None."""
        return None

    def diagnostics(self) -> str:
        return ""

    def log_summary(self) -> dict | None:
        """Warnings and errors the service logged during the run: {level: count, "events": {...}}."""
        return None

    def quarantined(self) -> int:
        """Objects the service quarantined in this run (handled, not delivered: a stage that
        cannot protect an object refuses it, e.g. encrypting pixels of an object without any)."""
        return 0


class DcmtkLimit(Contender):
    key = "dcmtk-limit"
    label = "dcmtk storescu -> storescp (limit)"
    is_limit = True

    def start(self, workdir, sink):
        self.port = sink.port
        self.called_aet = SINK_AET
        self.note = "no service in between: the network + sink limit"


class OrthancRouter(Contender):
    key = "orthanc"
    label = "Orthanc 1.10 Lua auto-route"
    is_peer = True

    def __init__(self, delete: bool = False):
        super().__init__()
        self.delete = delete
        self.orthanc = None

    def start(self, workdir, sink):
        lua = ORTHANC_LUA.replace("{delete}", "Delete(instanceId)" if self.delete else "")
        self.orthanc = peers.Orthanc(workdir, aet="ORTHANC", lua=lua,
                                     modalities={"sink": [SINK_AET, "127.0.0.1", sink.port]})
        self.orthanc.start()
        self.port = self.orthanc.dicom_port
        self.called_aet = "ORTHANC"
        self.note = "OnStoredInstance -> SendToModality" + (" + Delete" if self.delete else "")

    def stop(self):
        if self.orthanc is not None:
            self.orthanc.stop()

    @property
    def service_pid(self):
        return self.orthanc.proc.pid if self.orthanc and self.orthanc.proc else None

    def died(self):
        p = self.orthanc.proc if self.orthanc else None
        return f"Orthanc exited with {p.returncode}" if p is not None and p.poll() is not None else None

    def diagnostics(self):
        try:
            return "\n".join(self.orthanc.log_path.read_text().splitlines()[-15:])
        except Exception:
            return ""

    def log_summary(self):
        out: dict = {"warning": 0, "error": 0, "events": {}}
        try:
            lines = self.orthanc.log_path.read_text(errors="replace").splitlines()
        except Exception:
            return None
        started = next((i for i, ln in enumerate(lines) if "Orthanc has started" in ln), -1)
        for ln in lines[started + 1:]:  # Orthanc logs its start-up chatter at warning level
            level = {"W": "warning", "E": "error"}.get(ln[:1])
            if level:
                out[level] += 1
                event = ln.split("] ", 1)[-1][:120]
                out["events"][event] = out["events"].get(event, 0) + 1
        out["events"] = dict(sorted(out["events"].items(), key=lambda kv: -kv[1])[:8])
        return out


class PacsguardBase(Contender):
    pipeline_name = "pass"

    def __init__(self, pipeline: list | None = None, stages_note: str = "", keys: dict | None = None):
        super().__init__()
        self.pipeline = pipeline or []
        self.stages_note = stages_note
        self.keys = keys or {}
        self.svc = None

    def config(self, workdir: Path, sink) -> dict:
        cfg = {
            "spool": {"path": str(workdir / "spool"), "max_size": "200GiB", "retention": "1h"},
            "destinations": {"sink": {"type": "dicom", "ae_title": SINK_AET, "host": "127.0.0.1",
                                      "port": sink.port}},
            "routes": [{"name": self.pipeline_name, "match": {}, "to": ["sink"]}],
            "metrics": {"enabled": False},
            "logging": {"level": "info", "format": "json"},
        }
        if self.pipeline:
            cfg["routes"][0]["pipeline"] = self.pipeline
            if self.keys:
                cfg["keys"] = self.keys
        return cfg

    def start(self, workdir, sink):
        workdir.mkdir(parents=True, exist_ok=True)
        self.spool = workdir / "spool"
        text = yaml.safe_dump(self.config(workdir, sink), sort_keys=False)
        self.svc = peers.Pacsguard(workdir, text)
        check = subprocess.run(peers.PACSGUARD + ["check-config", str(self.svc.config_path)],
                               capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError("config refused: " + (check.stderr or check.stdout).strip()[-800:])
        self.svc.start(timeout=60)
        self.note = self.stages_note

    def stop(self):
        if self.svc is not None and self.svc.proc is not None:
            try:
                self.svc.stop(timeout=60)
            except subprocess.TimeoutExpired:
                self.svc.kill()

    @property
    def service_pid(self):
        return self.svc.proc.pid if self.svc and self.svc.proc else None

    def quarantined(self):
        spool = getattr(self, "spool", None)
        return sum(1 for _ in (spool / "quarantine").glob("*.json")) if spool and (spool / "quarantine").is_dir() else 0

    def died(self):
        p = self.svc.proc if self.svc else None
        return f"pacsguard exited with {p.returncode}" if p is not None and p.poll() is not None else None

    def diagnostics(self):
        if self.svc is None:
            return ""
        lines = [ln for ln in self.svc.log_text().splitlines()
                 if '"level": "error"' in ln or '"level": "warning"' in ln or "Traceback" in ln]
        return "\n".join((lines or self.svc.log_text().splitlines())[-12:])

    def log_summary(self):
        if self.svc is None:
            return None
        out: dict = {"warning": 0, "error": 0, "events": {}}
        for rec in self.svc.log_lines():
            level = rec.get("level")
            if level in ("warning", "error", "critical"):
                level = "error" if level == "critical" else level
                out[level] += 1
                event = f"{rec.get('logger', '?')}: {rec.get('event', '?')}"
                if rec.get("reason"):
                    event += f" ({str(rec['reason'])[:80]})"
                out["events"][event] = out["events"].get(event, 0) + 1
        out["events"] = dict(sorted(out["events"].items(), key=lambda kv: -kv[1])[:8])
        return out


class PacsguardDicom(PacsguardBase):
    def __init__(self, key, label, pipeline=None, stages_note="", keys=None):
        super().__init__(pipeline, stages_note, keys)
        self.key, self.label = key, label
        self.pipeline_name = "pass" if not pipeline else "protect"

    def config(self, workdir, sink):
        cfg = super().config(workdir, sink)
        self.port = peers.free_port()
        self.called_aet = "PACSGUARD"
        return {"node": {"ae_title": "PACSGUARD", "host": "127.0.0.1", "port": self.port}, **cfg}


class PacsguardFolder(PacsguardBase):
    key = "pacsguard-folder"
    label = "pacsguard folder ingest -> DICOM"
    kind = "folder"

    def config(self, workdir, sink):
        cfg = super().config(workdir, sink)
        self.inbound = workdir / "inbound"
        self.inbound.mkdir(parents=True, exist_ok=True)
        return {"watch": [{"name": "drop", "path": str(self.inbound)}], **cfg}


# --- the routes -----------------------------------------------------------------------------

def encrypt_pipeline(keys: dict, override: Path | None = None) -> tuple[list, str]:
    """The encryption route's pipeline and its note for the table."""
    if override is not None:
        pipeline = fill(yaml.safe_load(Path(override).read_text()), keys)
        names = [next(iter(step)) if isinstance(step, dict) else str(step) for step in pipeline]
        return pipeline, f"stages from {override.name}: {', '.join(names)}"
    kind = next((k for k, name in NAMES.items() if name == keys.get("recipient")), "?")
    return fill(ENCRYPT_PIPELINE, keys), f"encrypt: scope pixels, 1 recipient ({kind} key {keys.get('recipient')})"


def make_contenders(selected: list[str], keys: dict, pipeline_override: Path | None,
                    orthanc_delete: bool = False) -> list[Contender]:
    out: list[Contender] = []
    for key in selected:
        if key == "dcmtk-limit":
            out.append(DcmtkLimit())
        elif key == "orthanc":
            out.append(OrthancRouter(delete=orthanc_delete))
        elif key == "pacsguard-pass":
            out.append(PacsguardDicom("pacsguard-pass", "pacsguard pass-through (no stages)",
                                      stages_note="route {match: {}} with no stages"))
        elif key == "pacsguard-stage":
            out.append(PacsguardDicom("pacsguard-stage", "pacsguard with a stage", STAGE_PIPELINE,
                                      "set-attributes: 3 set, 1 removed (header only, pixel data copied raw)"))
        elif key == "pacsguard-encrypt":
            pipeline, note = encrypt_pipeline(keys, pipeline_override)
            out.append(PacsguardDicom("pacsguard-encrypt", "pacsguard with encryption", pipeline, note,
                                      keys=config_section(keys)))
        elif key == "pacsguard-deid-encrypt":
            out.append(PacsguardDicom("pacsguard-deid-encrypt", "pacsguard deidentify + encrypt",
                                      fill(DEID_ENCRYPT_PIPELINE, keys),
                                      "deidentify (basic profile, keyed) -> encrypt pixels", keys=config_section(keys)))
        elif key == "pacsguard-full":
            out.append(PacsguardDicom("pacsguard-full", "pacsguard full protection", fill(FULL_PIPELINE, keys),
                                      "deidentify -> embed (reversible, original values) -> encrypt pixels",
                                      keys=config_section(keys)))
        elif key == "pacsguard-folder":
            out.append(PacsguardFolder(stages_note="watched folder, no stages"))
        else:
            raise SystemExit(f"unknown contender {key!r}")
    return out


ALL = ("dcmtk-limit", "orthanc", "pacsguard-pass", "pacsguard-stage", "pacsguard-encrypt", "pacsguard-deid-encrypt",
       "pacsguard-full", "pacsguard-folder")


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

