"""``pacsguard keys``: generate key files, list the configured keys (never their material)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, rsa, x25519
from cryptography.x509.oid import NameOID

from .cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE, _load
from .config import _NAME
from .credentials import SecretFileError, check_owner_only, read_password
from .keystore import MIN_RSA_BITS, KeyConfig, KeyFileError, describe, load_key

KEY_TYPES = ("rsa", "x25519", "pq-hybrid", "secret")
CERT_VALIDITY = dt.timedelta(days=3652)  # ten years


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file; never replaces one (O_EXCL), mode set whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _certificate(name: str, private) -> x509.Certificate:
    """Self-signed, CN=NAME, ten years, for key transport (a CMS recipient's certificate)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + CERT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
            .sign(private, hashes.SHA256()))


def _new_keys(kind: str, bits: int) -> list:
    if kind == "rsa":
        return [rsa.generate_private_key(public_exponent=65537, key_size=bits)]
    if kind == "x25519":
        return [x25519.X25519PrivateKey.generate()]
    return [mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()]  # pq-hybrid: this order


def _write(name: str, kind: str, bits: int, out: Path, files: dict, password: bytes | None,
           password_file: Path | None) -> KeyConfig:
    """Write the new key's files; the ``keys:`` entry that names them."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    if kind == "secret":
        _create(files["key"], secrets.token_bytes(32).hex().encode() + b"\n", 0o600)
        return KeyConfig(secret=files["key"])
    keys = _new_keys(kind, bits)
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    _create(files["key"], b"".join(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
                                   for k in keys), 0o600)
    _create(files["pub"], b"".join(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) for k in keys), 0o644)
    if kind == "rsa":
        _create(files["crt"], _certificate(name, keys[0]).public_bytes(serialization.Encoding.PEM), 0o644)
    return KeyConfig(private=files["key"], certificate=files.get("crt"), password_file=password_file)


def generate(name: str, kind: str, out: Path, bits: int = MIN_RSA_BITS) -> KeyConfig:
    """Write a new key ``name`` of ``kind`` into ``out`` (never over existing files); its
    ``keys:`` entry."""
    files = {"key": out / f"{name}.key"}
    if kind != "secret":
        files["pub"] = out / f"{name}.pub"
    if kind == "rsa":
        files["crt"] = out / f"{name}.crt"
    return _write(name, kind, bits, out, files, None, None)


#: the keys the embedded default config names: made on first use, for trying pacsguard out
DEMO_KEYS = {"demo-site": "secret", "demo-partner": "rsa"}
DEMO_KEY_DIR = Path("pacsguard-data/keys")


def ensure_demo_keys() -> list[str]:
    """Make the embedded default's keys in ./pacsguard-data/keys where they are missing;
    returns the names made. (A production config names keys made with `keys generate`.)"""
    made = []
    for name, kind in DEMO_KEYS.items():
        if not (DEMO_KEY_DIR / f"{name}.key").exists():
            generate(name, kind, DEMO_KEY_DIR.absolute())
            made.append(name)
    return made


def cmd_keys_generate(args) -> int:
    name, kind = args.name, args.type
    if not re.match(_NAME, name):
        print(f"key name {name!r} must match {_NAME}", file=sys.stderr)
        return EXIT_USAGE
    if args.bits is not None and kind != "rsa":
        print("--bits is for rsa keys", file=sys.stderr)
        return EXIT_USAGE
    bits = args.bits or MIN_RSA_BITS
    if kind == "rsa" and bits < MIN_RSA_BITS:
        print(f"RSA keys need {MIN_RSA_BITS} bits or more", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out).expanduser().absolute()
    password = None
    if args.password_file:
        if kind == "secret":
            print("--password-file encrypts private keys; a secret file cannot be encrypted", file=sys.stderr)
            return EXIT_USAGE
        try:
            check_owner_only(args.password_file)
            password = read_password(args.password_file)
        except SecretFileError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
    files = {"key": out / f"{name}.key"}
    if kind != "secret":
        files["pub"] = out / f"{name}.pub"
    if kind == "rsa":
        files["crt"] = out / f"{name}.crt"
    existing = [str(p) for p in files.values() if p.exists()]
    if existing:
        print(f"refusing to overwrite {', '.join(existing)} (a new key gets a new name, or remove the old"
              " files first)", file=sys.stderr)
        return EXIT_INVALID
    try:
        cfg = _write(name, kind, bits, out, files, password,
                     Path(args.password_file).absolute() if password else None)
    except OSError as exc:
        print(f"cannot write the key files in {out}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return EXIT_INVALID
    try:
        key = load_key(name, cfg)  # the key ID as the service will see it
    except KeyFileError as exc:
        print(f"generated files do not load: {exc.message}", file=sys.stderr)
        return EXIT_INVALID

    size = f" ({bits} bits)" if kind == "rsa" else ""
    print(f"generated {kind} key {name!r}{size}, key ID {key.key_id}")
    print(f"  {files['key']}  {'secret' if kind == 'secret' else 'private key'} (mode 0600: only on hosts that"
          f" {'use it' if kind == 'secret' else 'decrypt'})")
    if "pub" in files:
        print(f"  {files['pub']}  public key")
    if "crt" in files:
        until = key.certificate.not_valid_after_utc.date().isoformat()
        print(f"  {files['crt']}  self-signed certificate CN={name}, valid until {until}")
    print("\nAdd to the config's keys: section:\n  keys:")
    if kind == "secret":
        print(f"    {name}: {{secret: {files['key']}}}")
        return EXIT_OK
    entry = f"private: {files['key']}"
    if password:
        entry += f", password_file: {cfg.password_file}"
    if "crt" in files:
        entry += f", certificate: {files['crt']}"
    print(f"    {name}: {{{entry}}}")
    public = files.get("crt", files["pub"])
    print(f"A host that only encrypts to this key gets {public.name} (no private key) and:\n"
          f"    {name}: {{public: /etc/pacsguard/keys/{public.name}}}")
    return EXIT_OK


def cmd_keys_list(args) -> int:
    loaded = _load(args)
    rows = [describe(k) for k in loaded.keys.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"{loaded.path or '<embedded default>'}: no keys configured")
        return EXIT_OK
    table = [("name", "type", "key ID", "holds", "source", "certificate")]
    for r in rows:
        kind = f"{r['type']}-{r['bits']}" if "bits" in r else r["type"]
        cert = r.get("certificate")
        table.append((r["name"], kind, r["key_id"], r["holds"] + (" (retired)" if r["retired"] else ""),
                      r["source"], f"{cert['subject']}, until {cert['not_after'][:10]}" if cert else "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


def add_parser(sub, with_config) -> None:
    s = sub.add_parser("keys", help="generate key files; list the configured keys (never their material)")
    ksub = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    g = ksub.add_parser("generate", help="write a new key: NAME.key (0600), NAME.pub, and NAME.crt for rsa")
    g.add_argument("name", metavar="NAME", help="key name (the files' names, and the name in keys:)")
    g.add_argument("--type", required=True, choices=KEY_TYPES)
    g.add_argument("--out", default=".", metavar="DIR", help="folder for the files (default: the current one)")
    g.add_argument("--bits", type=int, help=f"RSA key size (default and least: {MIN_RSA_BITS})")
    g.add_argument("--password-file", metavar="FILE", help="encrypt the private key with the first line of FILE")
    g.set_defaults(func=cmd_keys_generate)
    lst = with_config(ksub.add_parser("list", help="every configured key: name, type, key ID, source"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_keys_list)
