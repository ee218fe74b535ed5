"""``pacsguard reveal``: the re-identification side of steganographic embedding.

With ``--key NAME`` (keys of the config's key store, as for ``pacsguard decrypt``) each
input's carrier is opened: the original pixels (method reversible) and the original
header values come back, written to a new file, never over an existing one. Without a
key, or with ``--inspect``, it says only what the carrier shows in clear: the method,
its size and the recipients' key IDs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

EXIT_OK, EXIT_INVALID = 0, 1


def add_command(sub, with_config) -> None:
    s = with_config(sub.add_parser("reveal", help="take embedded patient data out of images: original pixels "
                                                  "and header (with --key), or say what a carrier shows"))
    s.add_argument("paths", nargs="+", metavar="IN", help="files or folders (recursively)")
    s.add_argument("-o", "--output", metavar="OUT",
                   help="output file (one input) or folder (default: beside each input, X.revealed.dcm)")
    s.add_argument("--key", action="append", default=[], metavar="NAME", help="a key of the config's key store")
    s.add_argument("--inspect", action="store_true", help="only say what the carrier shows (no key needed)")
    s.add_argument("--json", action="store_true", help="with --inspect (or no key): JSON")
    s.set_defaults(func=cmd_reveal)


def _keys(args) -> list:
    from . import config as configmod
    from .cli import _registry

    _, registry = _registry()
    store = configmod.load_config(configmod.find_config(args.config), registry).keys
    missing = [n for n in args.key if n not in store]
    if missing:
        raise ValueError(f"no key {missing[0]!r} in the key store")
    return [store[n] for n in args.key]


def _item(path: Path, keys):
    from .cli import _registry
    from .item import Item, TransportFacts

    pm, _ = _registry()
    return Item(0, path, TransportFacts(source="reveal", source_type="file"), keys={k.name: k for k in keys},
                decode_pixels=pm.hook.pacsguard_decode_pixels)


def _target(src: Path, root: Path | None, out: Path | None, single: bool) -> Path:
    name = src.name if src.name.lower().endswith(".dcm") else src.name + ".dcm"
    if out is not None and single and not out.is_dir():
        return out
    if out is not None:
        return out / (src.parent.relative_to(root) if root is not None else Path()) / name
    return src.with_name(name[:-4] + ".revealed.dcm")


def _reason(exc) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__


def cmd_reveal(args) -> int:
    from .cli import _inputs, _quiet_logging
    from .errors import QuarantineError

    _quiet_logging(args)
    inspect = args.inspect or not args.key
    try:
        keys = [] if inspect else _keys(args)
    except (ValueError, OSError) as exc:
        print(f"pacsguard reveal: {exc}", file=sys.stderr)
        return EXIT_INVALID
    jobs, missing = _inputs(args.paths)
    failed = len(missing)
    for raw in missing:
        print(f"FAILED {raw}: no such file or folder", file=sys.stderr)
    out = Path(args.output) if args.output else None
    single = len(jobs) == 1 and jobs[0][1] is None
    done, reports = 0, []
    for src, root in jobs:
        try:
            if inspect:
                reports.append(_inspect(src))
            else:
                dst = _target(src, root, out, single)
                what = reveal_path(src, dst, keys)
                print(f"{src} -> {dst}: {_said(what)}")
            done += 1
        except (QuarantineError, OSError) as exc:
            failed += 1
            print(f"FAILED {src}: {_reason(exc)}", file=sys.stderr)
    if inspect:
        if args.json:
            print(json.dumps(reports, indent=2))
        else:
            for r in reports:
                print(_described(r))
    else:
        print(f"revealed {done}, failed {failed}")
    return EXIT_OK if failed == 0 else EXIT_INVALID


def _inspect(src: Path) -> dict:
    from pacsguard.plugins.stego.reading import describe

    from .errors import QuarantineError

    item = _item(src, [])
    try:
        return {"file": str(src), **describe(item.dataset, item.pixels())}
    except QuarantineError:
        raise
    except Exception as exc:  # an unreadable input is that input's failure
        raise QuarantineError(f"cannot read the object ({type(exc).__name__})") from None


def _described(r: dict) -> str:
    method = r["method"] + (f", threshold {r['threshold']}" if r.get("threshold") else "") \
        + (f", {r['lsb_bits']} bit(s) per pixel" if r.get("lsb_bits") else "")
    recipients = ", ".join(f"{x['key_id']} ({x['method']})" for x in r["recipients"])
    return f"{r['file']}: carrier present ({method}), {r['carrier_bytes']} bytes; recipients: {recipients}"


def _said(what: dict) -> str:
    attrs = ", ".join(what["attributes"]) or "none"
    return f"{what['method']} carrier opened with key ID {what['key_id']}; pixels {what['pixels']}; attributes restored: {attrs}"


def reveal_path(src: Path, dst: Path, keys) -> dict:
    """Write ``src`` revealed with ``keys`` to ``dst`` (never overwritten, never partly
    written); what was done. QuarantineError when there is no carrier for these keys or
    anything fails to authenticate."""
    from pacsguard.plugins.stego.embedding import reveal

    from .errors import QuarantineError

    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise QuarantineError(f"{dst} exists: not overwritten")
    dst.parent.mkdir(parents=True, exist_ok=True)
    item = _item(src, keys)
    try:
        what = reveal(item.dataset, item.pixels(), keys)
    except QuarantineError:
        raise
    except Exception as exc:  # an unreadable input is that input's failure
        raise QuarantineError(f"cannot read the object ({type(exc).__name__})") from None
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".pacsguard-reveal-") as tmp:
        out = Path(tmp) / "out.dcm"
        item.write(out)
        os.link(out, dst)  # fails if dst appeared meanwhile: never overwrites
    return what
