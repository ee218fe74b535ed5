"""The ``pacsguard`` command line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from . import config as configmod
from .errors import ConfigError, PluginError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _registry():
    from .plugins import collect, get_plugin_manager

    pm = get_plugin_manager()
    return pm, collect(pm)


def _load(args):
    _, registry = _registry()
    return configmod.load_config(configmod.find_config(getattr(args, "config", None)), registry)


def _print_config_error(exc: ConfigError) -> None:
    print(f"{exc.source}: invalid configuration ({len(exc.errors)} error{'s' * (len(exc.errors) != 1)})",
          file=sys.stderr)
    for err in exc.errors:
        print(f"  {err}", file=sys.stderr)


def cmd_run(args) -> int:
    from .service import Service

    path = configmod.find_config(args.config)
    try:
        return Service(path).run()
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_INVALID


def cmd_check_config(args) -> int:
    path = configmod.find_config(args.file)
    try:
        _, registry = _registry()
        loaded = configmod.load_config(path, registry)
        from .runtime import build_runtime

        build_runtime(loaded, registry)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_INVALID
    cfg = loaded.config
    for warning in loaded.warnings:
        print(f"{path or '<embedded default>'}: warning: {warning}", file=sys.stderr)
    keys = f", {len(loaded.keys)} key(s)" if loaded.keys else ""
    print(f"{path or '<embedded default>'}: OK — {len(cfg.routes)} route(s), "
          f"{len(cfg.destinations)} destination(s), {len(loaded.sources)} source(s){keys}")
    return EXIT_OK


def cmd_config_schema(args) -> int:
    _, registry = _registry()
    print(configmod.schema_json(registry))
    return EXIT_OK


def cmd_config_reference(args) -> int:
    from .reference import reference, update_readme

    _, registry = _registry()
    if args.write:
        changed = update_readme(Path(args.write), registry)
        print(f"{args.write}: {'updated' if changed else 'already current'}")
    else:
        print(reference(registry), end="")
    return EXIT_OK


def cmd_config_default(args) -> int:
    print(configmod.embedded_default_text(), end="")
    return EXIT_OK


def cmd_plugins(args) -> int:
    from .plugins import describe

    pm, registry = _registry()
    plugins = describe(pm, registry)
    if args.json:
        print(json.dumps(plugins, indent=2))
        return EXIT_OK
    for p in plugins:
        print(f"{p['name']}  [{p['origin']}]  {p['module']}")
        for kind in ("stages", "destinations", "sources"):
            for name in p[kind]:
                cls = registry.kind(kind)[name].cls
                missing = cls.missing_dependencies()
                extra = f"  (needs: {', '.join(missing)})" if missing else ""
                print(f"    {kind[:-1]:<12} {name:<20} {cls.summary()}{extra}")
                device = getattr(cls, "device_summary", None)  # stages that run models
                if device is not None and not missing:
                    print(f"    {'':<12} {'':<20} device: {device()}")
        print(f"    hooks: {', '.join(p['hooks'])}")
        for line in p.get("report", []):
            print(f"    {line}")
    return EXIT_OK


def _spool(args):
    from .spool import Spool

    loaded = _load(args)
    return Spool(loaded.config.spool.path, loaded.config.spool.max_size, readonly=True)


def _ago(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def cmd_status(args) -> int:
    st = _spool(args).status()
    if args.json:
        print(json.dumps(st, indent=2))
        return EXIT_OK
    print(f"spool {st['spool']}: {st['spool_bytes'] / 1e6:.1f} MB"
          + (f" of {st['spool_limit_bytes'] / 1e6:.0f} MB" if st["spool_limit_bytes"] else ""))
    print("jobs: " + ", ".join(f"{k} {v}" for k, v in st["jobs"].items()))
    print(f"oldest unfinished job: {_ago(st['oldest_pending_age_s'])}")
    print(f"{'destination':<24}{'pending':>9}{'delivered':>11}{'quarantined':>13}  oldest pending")
    for name, d in sorted(st["destinations"].items()):
        print(f"{name:<24}{d['pending']:>9}{d['delivered']:>11}{d['quarantined']:>13}  "
              f"{_ago(d.get('oldest_pending_age_s'))}")
    q = st["quarantine"]
    print(f"quarantine: {q['entries']} entr{'y' if q['entries'] == 1 else 'ies'}, {q['bytes'] / 1e6:.1f} MB")
    return EXIT_OK


def _when(ts) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def cmd_quarantine_list(args) -> int:
    entries = _spool(args).quarantine_entries(include_released=args.all)
    if args.json:
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    if not entries:
        print("quarantine is empty")
        return EXIT_OK
    print(f"{'id':>5}  {'quarantined':<20}  {'job':>6}  {'place':<24}  reason")
    for e in entries:
        print(f"{e['id']:>5}  {_when(e['created_at']):<20}  {e['job_id']:>6}  {e['place']:<24}  {e['reason']}")
    return EXIT_OK


def cmd_quarantine_show(args) -> int:
    spool = _spool(args)
    e = spool.quarantine_entry(args.id)
    if e is None:
        print(f"no quarantine entry {args.id}", file=sys.stderr)
        return EXIT_INVALID
    e["file"] = str(spool.quarantine_dir / f"{args.id}.dcm")
    if args.json:
        print(json.dumps(e, indent=2))
        return EXIT_OK
    for key in ("id", "job_id", "place", "reason", "route", "destination", "attempts", "source",
                "source_type", "calling_ae", "called_ae", "calling_host", "size", "file"):
        if e.get(key) is not None:
            print(f"{key:<13} {e[key]}")
    print(f"{'received':<13} {_when(e.get('received_at'))}")
    print(f"{'quarantined':<13} {_when(e['created_at'])}")
    print(f"{'released':<13} {_when(e['released_at'])}")
    return EXIT_OK


def cmd_quarantine_retry(args) -> int:
    from .spool import Spool

    loaded = _load(args)
    spool = Spool(loaded.config.spool.path, loaded.config.spool.max_size)
    ids = [e["id"] for e in spool.quarantine_entries()] if args.all else args.ids
    if not ids:
        print("nothing to retry" if args.all else "give quarantine ids or --all", file=sys.stderr)
        return EXIT_OK if args.all else EXIT_USAGE
    rc = EXIT_OK
    for qid in ids:
        try:
            what = spool.release(qid)
            print(f"{qid}: {what} back in flow")
        except (KeyError, ValueError) as exc:
            print(f"{qid}: {exc.args[0]}", file=sys.stderr)
            rc = EXIT_INVALID
    return rc


def _quiet_logging(args) -> None:
    from .logs import configure_logging

    configure_logging("info" if getattr(args, "verbose", False) else "warning", "console", sys.stderr)


def _destination(args):
    """The configured destination ``args.destination``, instantiated; None (after saying
    why) if it does not exist or cannot be set up."""
    _, registry = _registry()
    loaded = configmod.load_config(configmod.find_config(args.config), registry)
    name = args.destination
    spec = loaded.config.destinations.get(name)
    if spec is None:
        known = ", ".join(sorted(loaded.config.destinations)) or "none"
        print(f"no destination {name!r} in the config (defined: {known})", file=sys.stderr)
        return None
    try:
        return registry.destinations[spec.type].cls(name, loaded.destination_options[name])
    except Exception as exc:
        print(f"{name}: cannot set up destination ({exc})", file=sys.stderr)
        return None


def cmd_echo(args) -> int:
    from .errors import DeliveryError

    _quiet_logging(args)
    dest = _destination(args)
    if dest is None:
        return EXIT_INVALID
    try:
        if not hasattr(dest, "echo"):
            print(f"{args.destination}: a destination of type {dest.name!r} cannot be echoed "
                  "(C-ECHO needs a DICOM destination)", file=sys.stderr)
            return EXIT_INVALID
        try:
            t = dest.echo()
        except DeliveryError as exc:
            print(f"{args.destination}: C-ECHO failed: {exc.reason}", file=sys.stderr)
            return EXIT_INVALID
    finally:
        dest.close()
    print(f"{args.destination}: C-ECHO to {dest.peer} succeeded, round trip {t['total_s'] * 1000:.1f} ms "
          f"(association {t['associate_s'] * 1000:.1f} ms, echo {t['echo_s'] * 1000:.1f} ms, "
          f"release {t['release_s'] * 1000:.1f} ms)")
    return EXIT_OK


def _inputs(paths) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """The files named on a command line, folders walked recursively: ([(file, the folder it
    was found in, or None for a file named itself)], [names that do not exist])."""
    jobs, missing = [], []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            jobs.extend((f, p) for f in sorted(p.rglob("*")) if f.is_file())
        elif p.is_file():
            jobs.append((p, None))
        else:
            missing.append(raw)
    return jobs, missing


def _files(paths) -> tuple[list[Path], list[str]]:
    jobs, missing = _inputs(paths)
    return [f for f, _ in jobs], missing


def cmd_send(args) -> int:
    import time

    from .errors import DeliveryError, QuarantineError
    from .item import check_integrity, read_header

    _quiet_logging(args)
    files, missing = _files(args.paths)
    for raw in missing:
        print(f"FAILED {raw}: no such file or folder", file=sys.stderr)
    dest = _destination(args)
    if dest is None:
        return EXIT_INVALID
    sent, failed, started = 0, len(missing), time.monotonic()
    try:
        for f in files:
            try:
                header = read_header(f)
                check_integrity(f, header)
                dest.send(f, header)
                sent += 1
            except (DeliveryError, QuarantineError) as exc:
                failed += 1
                kind = " (permanent)" if getattr(exc, "permanent", False) else ""
                print(f"FAILED {f}: {exc.reason}{kind}", file=sys.stderr)
    finally:
        dest.close()
    print(f"{args.destination}: sent {sent}, failed {failed} in {time.monotonic() - started:.1f}s")
    return EXIT_OK if failed == 0 else EXIT_INVALID


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacsguard", description="DICOM security daemon: receive, route, protect, forward.")
    p.add_argument("--version", action="version", version=f"pacsguard {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp):
        sp.add_argument("--config", "-c", metavar="FILE",
                        help="config file (default: $PACSGUARD_CONFIG, /etc/pacsguard/pacsguard.yaml, embedded)")
        return sp

    s = with_config(sub.add_parser("run", help="run the service in the foreground"))
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("check-config", help="validate a config file; list every error")
    s.add_argument("file", nargs="?", help="config file (default: as for run)")
    s.set_defaults(func=cmd_check_config)
    s = sub.add_parser("config", help="configuration helpers")
    csub = s.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    csub.add_parser("schema", help="print the config's JSON Schema").set_defaults(func=cmd_config_schema)
    csub.add_parser("default", help="print the embedded default config").set_defaults(func=cmd_config_default)
    r = csub.add_parser("reference", help="print the configuration reference (Markdown), every key")
    r.add_argument("--write", metavar="README", help="update the generated section of this file instead")
    r.set_defaults(func=cmd_config_reference)
    s = sub.add_parser("plugins", help="list loaded plugins and what they provide")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plugins)
    s = with_config(sub.add_parser("status", help="spool counts per state and destination"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("quarantine", help="list, show and retry quarantined objects")
    qsub = s.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    q = with_config(qsub.add_parser("list", help="list quarantine entries"))
    q.add_argument("--all", action="store_true", help="include released entries")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_list)
    q = with_config(qsub.add_parser("show", help="show one entry"))
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_show)
    q = with_config(qsub.add_parser("retry", help="put entries back in flow once the cause is fixed"))
    q.add_argument("ids", type=int, nargs="*", metavar="ID")
    q.add_argument("--all", action="store_true", help="retry every open entry")
    q.set_defaults(func=cmd_quarantine_retry)
    s = with_config(sub.add_parser("echo", help="C-ECHO a configured DICOM destination"))
    s.add_argument("destination", metavar="DEST", help="destination name in the config")
    s.add_argument("--verbose", "-v", action="store_true", help="log associations")
    s.set_defaults(func=cmd_echo)
    s = with_config(sub.add_parser("send", help="send files (folders recursively) straight to a destination"))
    s.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    s.add_argument("--to", dest="destination", required=True, metavar="DEST", help="destination name in the config")
    s.add_argument("--verbose", "-v", action="store_true", help="log associations")
    s.set_defaults(func=cmd_send)
    from .cli_keys import add_parser as add_keys_parser
    from .cli_process import add_command as add_process_command
    from .cli_protect import add_commands  # decrypt, inspect
    from .cli_reveal import add_command as add_reveal_command

    add_keys_parser(sub, with_config)
    add_commands(sub, with_config)
    add_process_command(sub, with_config)
    add_reveal_command(sub, with_config)
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pacsguard")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_INVALID
    except PluginError as exc:
        print(f"plugin error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
