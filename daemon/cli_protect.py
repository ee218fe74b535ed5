"""``pacsguard decrypt`` and ``pacsguard inspect``: the key holders' side of encryption.

``inspect`` needs no key. ``decrypt`` takes private keys as PEM files (``--key-file``,
``--cert`` for the certificate CMS needs); ``--key NAME`` takes them from the config's
key store (``keys:``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_OK, EXIT_INVALID = 0, 1


def add_commands(sub, with_config) -> None:
    s = with_config(sub.add_parser("decrypt", help="decrypt files and folders (.pgenc, pixels, attributes)"))
    s.add_argument("paths", nargs="+", metavar="IN", help="files or folders (recursively)")
    s.add_argument("-o", "--output", metavar="OUT",
                   help="output file (one input) or folder (default: beside each input)")
    s.add_argument("--key", action="append", default=[], metavar="NAME", help="a key of the config's key store")
    s.add_argument("--key-file", action="append", default=[], metavar="PEM",
                   help="a private key (PKCS#8 PEM); a pq-hybrid key: one file with the ML-KEM-768 block then the "
                        "X25519 block (as keys generate writes it), or those two as separate files")
    s.add_argument("--cert", action="append", default=[], metavar="PEM", help="the certificate of an RSA key (CMS)")
    s.add_argument("--transfer-syntax", choices=("native", "original"), default="native",
                   help="decrypted pixels: native (default), or original: a lossless original re-encoded in its own "
                        "transfer syntax (kept only when it decodes to the same pixels; lossy originals stay native)")
    s.set_defaults(func=cmd_decrypt)
    s = sub.add_parser("inspect", help="say what protection files carry (scopes, key IDs); no key needed")
    s.add_argument("paths", nargs="+", metavar="FILE")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    from pacsguard.daemon.errors import QuarantineError
    from pacsguard.plugins.encryption.protection import describe

    from .cli import _files

    files, missing = _files(args.paths)
    failed = len(missing)
    for raw in missing:
        print(f"FAILED {raw}: no such file or folder", file=sys.stderr)
    reports = []
    for f in files:
        try:
            reports.append(describe(f))
        except QuarantineError as exc:
            failed += 1
            print(f"FAILED {f}: {exc.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(reports, indent=2))
    for r in [] if args.json else reports:
        if not r["protections"]:
            print(f"{r['file']}: {r['kind']}, not encrypted by pacsguard")
        for p in r["protections"]:
            recipients = ", ".join(f"{x['key_id']} ({x['method']})" for x in p["recipients"]) or "unknown"
            extra = f", original transfer syntax {p['original_transfer_syntax']}" if "original_transfer_syntax" in p else ""
            print(f"{r['file']}: {r['kind']}, scope {p['scope']} ({p['scheme']}{extra}); recipients: {recipients}")
    return EXIT_OK if failed == 0 else EXIT_INVALID


def _keys(args) -> list:
    from pacsguard.plugins.encryption.protection import keys_from_files

    keys = keys_from_files([Path(p) for p in args.key_file], [Path(c) for c in args.cert])
    if args.key:
        from . import config as configmod
        from .cli import _registry

        _, registry = _registry()
        store = configmod.load_config(configmod.find_config(args.config), registry).keys
        for name in args.key:
            if name not in store:
                raise ValueError(f"no key {name!r} in the key store")
            keys.append(store[name])
    if not keys:
        raise ValueError("give --key NAME or --key-file PEM")
    return keys


def _target(src: Path, root: Path | None, out: Path | None, single: bool) -> Path:
    from pacsguard.plugins.encryption.sealed import SUFFIX

    name = src.name[:-len(SUFFIX)] if src.name.endswith(SUFFIX) else src.name
    if not name.lower().endswith(".dcm"):
        name += ".dcm"
    if out is not None and single and not out.is_dir():
        return out
    if out is not None:
        rel = src.parent.relative_to(root) if root is not None else Path()
        return out / rel / name
    if name == src.name:  # a DICOM file decrypted beside itself
        name = name[:-4] + ".decrypted.dcm"
    return src.with_name(name)


def cmd_decrypt(args) -> int:
    from pacsguard.daemon.errors import QuarantineError
    from pacsguard.plugins.encryption.protection import decrypt_path

    try:
        keys = _keys(args)
    except (ValueError, OSError) as exc:
        print(f"pacsguard decrypt: {exc}", file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.output) if args.output else None
    from .cli import _inputs

    jobs, missing = _inputs(args.paths)
    failed = len(missing)
    for raw in missing:
        print(f"FAILED {raw}: no such file or folder", file=sys.stderr)
    single = len(jobs) == 1 and jobs[0][1] is None
    done = 0
    for src, root in jobs:
        dst = _target(src, root, out, single)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            scopes = decrypt_path(src, dst, keys, args.transfer_syntax)
        except (QuarantineError, OSError) as exc:
            failed += 1
            print(f"FAILED {src}: {getattr(exc, 'reason', None) or exc.strerror or type(exc).__name__}",
                  file=sys.stderr)
            continue
        done += 1
        print(f"{src} -> {dst} ({', '.join(scopes)})")
    print(f"decrypted {done}, failed {failed}")
    return EXIT_OK if failed == 0 else EXIT_INVALID
