"""Per-stage micro-benchmarks: ``Stage.process`` timed on Items built from the corpus.

Stages are found by name in the plugin registry
(``collect(get_plugin_manager()).stages``); every name in :data:`WATCHED` is reported,
"not present" when no plugin provides it yet, so new stages are picked up as they land.
Stages with an inverse are timed on the output of their forward stage (reveal after
embed, decrypt after encrypt, ...). Any other registered stage is timed too, with its
default options when it has them; an option set counts when it validates and names keys of
the run's key store of a type the stage accepts (reveal gets the recipient embed sealed
for, not the secret key). Pixel decoding is timed through pacsguard's decoding
path (the ``pacsguard_decode_pixels`` hook: a GPU decoder plugin takes it over) and
through pydicom directly (the CPU reference).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .common import log, median, percentile
from .contenders import STAGE_OPTION_CANDIDATES, fill
from .corpus import CorpusFile

#: stage name -> stages that must run first (untimed) on the same item
WATCHED: dict[str, tuple[str, ...]] = {
    "set-attributes": (),
    "deidentify": (),
    "embed": ("deidentify",),
    "reveal": ("deidentify", "embed"),
    "encrypt": (),
    "decrypt": ("encrypt",),
    "scramble": (),
    "unscramble": ("scramble",),
    "infer": (),
}
#: inverse stages read what their forward stage wrote: the item is written and re-read in between
INVERSES = {"reveal": "embed", "decrypt": "encrypt", "unscramble": "scramble"}


def stage_options(cls, keys: dict, store: dict) -> tuple[dict | None, str | None]:
    """The first candidate option set (contenders.STAGE_OPTION_CANDIDATES, placeholders of
    keys.py filled) that validates and whose keys the key store ``store`` holds with a type
    the stage accepts, as the config check would judge them: (options, None) or (None, why).
    A set that merely validates is not enough: ``reveal: {key: bench-secret}`` validates
    but a secret key cannot open what embed sealed for the recipient."""
    from pacsguard.daemon.keystore import check_uses

    errors = []
    for cand in STAGE_OPTION_CANDIDATES.get(cls.name, [{}]):
        opts = fill(cand, keys)
        try:
            options = cls.Options(**opts)
        except Exception as exc:  # pydantic ValidationError and friends
            errors.append(str(exc).splitlines()[0])
            continue
        uses = cls.key_uses(options)
        absent = [u.name for u in uses if u.name not in store]
        wrong = check_uses(cls.name, uses, store, set(store), ())
        if not absent and not wrong:
            return opts, None
        errors.append(f"key {', '.join(absent)} not in the benchmark's key store" if absent else wrong[0][1])
    return None, f"no known option set fits ({'; '.join(errors[:2])})"


def _facts():
    from pacsguard.daemon.item import TransportFacts

    return TransportFacts(source="bench", source_type="dicom", calling_ae="BENCHSCU", called_ae="PACSGUARD",
                          calling_host="127.0.0.1")


def _item(job_id: int, path: Path, keys: dict, decode):
    from pacsguard.daemon.item import Item

    return Item(job_id, path, _facts(), keys=keys, decode_pixels=decode)


def run(ct: list[CorpusFile], bundled: list[CorpusFile], keys: dict, *, store: dict | None = None,
        repeat: int = 1, extra_plugins: tuple = ()) -> dict:
    """Time every watched and every other registered stage; returns a JSON-able dict.
    ``keys`` fills the option placeholders, ``store`` (key name -> loaded key) is the items'
    key store: a stage naming a key it lacks is "not benchmarked". ``extra_plugins`` are
    registered besides the built-in and entry-point ones (tests)."""
    from pacsguard.daemon.plugins import collect, get_plugin_manager

    pm = get_plugin_manager(extra=tuple(extra_plugins))
    stages = collect(pm).stages
    decode = pm.hook.pacsguard_decode_pixels
    key_map = dict(store or {})
    names = list(WATCHED) + sorted(n for n in stages if n not in WATCHED)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pacsguard-bench-stages-") as tmp:
        tmp = Path(tmp)
        instances: dict[str, object] = {}

        def instance(name):
            if name not in instances:
                if name not in stages:
                    raise LookupError(f"{name} not present")
                cls = stages[name].cls
                missing = cls.missing_dependencies()
                if missing:
                    raise LookupError(f"needs {', '.join(missing)}")
                opts, why = stage_options(cls, keys, key_map)
                if opts is None:
                    raise LookupError(why)
                instances[name] = cls(cls.Options(**opts))
            return instances[name]

        for name in names:
            if name not in stages:
                out[name] = {"present": False}
                continue
            entry: dict = {"present": True, "plugin": stages[name].plugin}
            try:
                stage = instance(name)
                for dep in WATCHED.get(name, ()):
                    if dep in stages:
                        instance(dep)
            except LookupError as exc:
                entry.update(status="not benchmarked", reason=str(exc))
                out[name] = entry
                continue
            except Exception as exc:  # constructing the stage failed
                entry.update(status="error", reason=f"{type(exc).__name__}: {exc}")
                out[name] = entry
                continue
            entry["options"] = _jsonable(stage.options)
            for part, files in (("ct", ct), ("bundled", bundled)):
                if files:
                    entry[part] = _time_stage(name, stage, files, instances, key_map, decode, tmp / name / part,
                                              repeat=repeat)
            ct_ms = entry.get("ct", {}).get("process_ms_p50")
            entry["status"] = "ok" if ct_ms is not None else "failed"
            out[name] = entry
            log(f"stage {name}: {ct_ms if ct_ms is not None else '-'} ms/img (CT, p50)")
        out["decode (pacsguard path)"] = _time_decode(ct[:5] + bundled, decode, key_map, via_hook=True,
                                                      first=_first_decoder(pm))
        out["decode (pydicom CPU)"] = _time_decode(ct[:5] + bundled, decode, key_map, via_hook=False)
    return out


def _first_decoder(pm) -> str:
    impls = pm.hook.pacsguard_decode_pixels.get_hookimpls()
    return impls[-1].plugin_name if impls else "?"  # pluggy calls the last registered / tryfirst first


def _time_stage(name, stage, files, instances, keys, decode, folder: Path, *, repeat: int) -> dict:
    from pacsguard.daemon.errors import QuarantineError

    folder.mkdir(parents=True, exist_ok=True)
    parse_t, process_t, write_t = [], [], []
    quarantined: dict[str, int] = {}
    errors: dict[str, int] = {}
    forward = INVERSES.get(name)
    for _ in range(repeat):
        for i, f in enumerate(files):
            try:
                item = _item(i, f.path, keys, decode)
                for dep in WATCHED.get(name, ()):
                    if dep in instances:
                        item = instances[dep].process(item)
                    if dep == forward:  # the inverse reads what was written
                        mid = folder / f"fwd_{i}.dcm"
                        item.write(mid)
                        item = _item(i, mid, keys, decode)
                t0 = time.perf_counter()
                _ = item.dataset  # parse (each stage's first touch pays it once per object)
                t1 = time.perf_counter()
                item = stage.process(item)
                t2 = time.perf_counter()
                item.write(folder / f"out_{i}.dcm")
                t3 = time.perf_counter()
            except QuarantineError as exc:
                reason = str(exc)[:80]
                quarantined[reason] = quarantined.get(reason, 0) + 1
                continue
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[reason] = errors.get(reason, 0) + 1
                continue
            parse_t.append(t1 - t0)
            process_t.append(t2 - t1)
            write_t.append(t3 - t2)
    ms = lambda xs, q: round(1000 * percentile(xs, q), 3) if xs else None  # noqa: E731
    res = {
        "objects": len(files) * repeat,
        "ok": len(process_t),
        "parse_ms_p50": ms(parse_t, 50),
        "process_ms_p50": ms(process_t, 50),
        "process_ms_p90": ms(process_t, 90),
        "process_ms_mean": round(1000 * sum(process_t) / len(process_t), 3) if process_t else None,
        "write_ms_p50": ms(write_t, 50),
        "images_per_s": round(len(process_t) / sum(process_t), 1) if process_t and sum(process_t) > 0 else None,
    }
    if quarantined:
        res["quarantined"] = quarantined
    if errors:
        res["errors"] = errors
    return res


def _time_decode(files, decode, keys, *, via_hook: bool, first: str | None = None) -> dict:
    per_ts: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    for i, f in enumerate(files):
        item = _item(i, f.path, keys, decode)
        try:
            ds = item.dataset
            if "PixelData" not in ds:
                continue
            t0 = time.perf_counter()
            item.pixels() if via_hook else ds.pixel_array
            dt = time.perf_counter() - t0
        except Exception as exc:
            key = f"{_ts_name(f.transfer_syntax)}: {type(exc).__name__}"
            failures[key] = failures.get(key, 0) + 1
            continue
        per_ts.setdefault(_ts_name(f.transfer_syntax), []).append(dt)
    res = {"present": True, "status": "ok",
           "per_transfer_syntax_ms_median": {ts: round(1000 * median(v), 3) for ts, v in sorted(per_ts.items())}}
    if first:
        res["first_implementation"] = first
    if failures:
        res["failures"] = failures
    ct = per_ts.get("Explicit VR Little Endian")
    res["ct"] = {"process_ms_p50": round(1000 * median(ct), 3) if ct else None}
    return res


def _ts_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def _jsonable(options) -> dict:
    try:
        return options.model_dump(mode="json")
    except Exception:
        return {}
