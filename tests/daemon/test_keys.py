"""The key store: ``keys:`` in the YAML names files, loaded and checked with the config;
stages get the loaded keys, read-only, in ``item.keys``; every problem is a config error
with its place; no material in errors or reprs."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import uuid
from pathlib import Path
from types import MappingProxyType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, rsa, x25519
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file

from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.errors import ConfigError
from pacsguard.daemon.extension import Options, Stage
from pacsguard.daemon.hookspecs import hookimpl
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import KeyUse, by_key_id, hybrid_key_id, public_key_id, secret_key_id
from pacsguard.daemon.pipeline import Processor
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.service import build_runtime
from pacsguard.daemon.spool import Spool

PEM = serialization.Encoding.PEM
PKCS8 = serialization.PrivateFormat.PKCS8
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
NOENC = serialization.NoEncryption()
_PLACED = re.compile(r"^(?P<place>[^:]+?): (?P<msg>.*) \(line (?P<line>\d+)\)$", re.S)
ASYMMETRIC = frozenset({"rsa", "x25519", "pq-hybrid"})


# --- a stage that names keys, as the encryption stages will --------------------------------


class Seal(Stage):
    """Names keys in its options; records what it finds in ``item.keys``."""

    name = "test-seal"

    class Options(Options):
        recipients: list[str] = []
        cms_to: list[str] = []
        decrypt_with: str | None = None
        pseudonym: str | None = None

    seen: list = []  # (keys mapping, {name: key ID}) per processed item

    @classmethod
    def key_uses(cls, o):
        uses = [KeyUse(f"recipients[{i}]", n, ASYMMETRIC) for i, n in enumerate(o.recipients)]
        uses += [KeyUse(f"cms_to[{i}]", n, frozenset({"rsa"}), certificate=True) for i, n in enumerate(o.cms_to)]
        if o.decrypt_with:
            uses.append(KeyUse("decrypt_with", o.decrypt_with, ASYMMETRIC, private=True))
        if o.pseudonym:
            uses.append(KeyUse("pseudonym", o.pseudonym, frozenset({"secret"})))
        return uses

    def process(self, item):
        names = [*self.options.recipients, *self.options.cms_to]
        Seal.seen.append((item.keys, {n: item.keys[n].key_id for n in names}))
        return item


class Plugin:
    __name__ = "test-keys"

    @hookimpl
    def pacsguard_register_stages(self, register):
        register(Seal)


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(entry_points=False, extra=(Plugin(),))


@pytest.fixture(scope="module")
def registry(pm):
    return collect(pm)


# --- key material (generated once) --------------------------------------------------------


def _cert(private, cn="site"):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30)).sign(private, hashes.SHA256()))


@pytest.fixture(scope="module")
def m():
    """Key objects and their PEM forms."""
    rsa_a = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    rsa_b = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    rsa_small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    xk = x25519.X25519PrivateKey.generate()
    mk, mx = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()

    def priv(*keys, enc=NOENC):
        return b"".join(k.private_bytes(PEM, PKCS8, enc) for k in keys)

    def pub(*keys):
        return b"".join(k.public_key().public_bytes(PEM, SPKI) for k in keys)

    return {
        "rsa_a": rsa_a, "rsa_b": rsa_b, "x": xk, "mk": mk, "mx": mx,
        "rsa_a.key": priv(rsa_a), "rsa_a.pub": pub(rsa_a), "rsa_a.crt": _cert(rsa_a).public_bytes(PEM),
        "rsa_a.enc": priv(rsa_a, enc=serialization.BestAvailableEncryption(b"s3cret pass")),
        "rsa_b.key": priv(rsa_b), "rsa_b.crt": _cert(rsa_b, "other").public_bytes(PEM),
        "rsa_small.key": priv(rsa_small),
        "x.key": priv(xk), "x.pub": pub(xk),
        "pq.key": priv(mk, mx), "pq.pub": pub(mk, mx), "mlkem-only.key": priv(mk),
        "pq-wrong-order.key": priv(mx, mk),
        "ec.key": priv(ec.generate_private_key(ec.SECP256R1())),
        "secret": os.urandom(32),
    }


def put(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def config(keys_yaml: str, tmp_path: Path, pipeline: str = "") -> str:
    text = "keys:\n" + textwrap.indent(textwrap.dedent(keys_yaml), "  ") if keys_yaml.strip() else ""
    text += textwrap.dedent(f"""\
        destinations:
          out: {{type: folder, path: "{tmp_path / 'out'}"}}
        """)
    if pipeline:
        text += "routes:\n  - name: r\n    to: [out]\n    pipeline:\n"
        text += textwrap.indent(textwrap.dedent(pipeline), "      ")
    return text


def load(text: str, registry):
    return load_config_text(text, registry)


def placed_errors(text: str, registry) -> dict[str, tuple[str, int]]:
    with pytest.raises(ConfigError) as info:
        load(text, registry)
    out = {}
    for err in info.value.errors:
        match = _PLACED.match(err)
        assert match, f"error without place and line: {err!r}"
        out[match["place"]] = (match["msg"], int(match["line"]))
    return out


# --- loading each type --------------------------------------------------------------------


def test_every_type_loads_from_its_files_with_a_stable_key_id(m, tmp_path, registry):
    d = tmp_path
    put(d / "a.key", m["rsa_a.key"])
    put(d / "a.crt", m["rsa_a.crt"], 0o644)
    put(d / "a.pub", m["rsa_a.pub"], 0o644)
    put(d / "x.key", m["x.key"])
    put(d / "x.pub", m["x.pub"], 0o644)
    put(d / "pq.key", m["pq.key"])
    put(d / "pq.pub", m["pq.pub"], 0o644)
    put(d / "s.hex", m["secret"].hex().encode() + b"\n")
    put(d / "s.bin", m["secret"])
    loaded = load(config(f"""\
        site: {{private: {d}/a.key, certificate: {d}/a.crt}}
        partner: {{public: {d}/a.crt}}
        partner-pem: {{public: {d}/a.pub}}
        x: {{private: {d}/x.key}}
        x-pub: {{public: {d}/x.pub}}
        pq: {{private: {d}/pq.key}}
        pq-pub: {{public: {d}/pq.pub}}
        pseudo: {{secret: {d}/s.hex}}
        pseudo-raw: {{secret: {d}/s.bin}}
        """, tmp_path), registry)
    k = loaded.keys
    assert isinstance(k, MappingProxyType)
    assert {n: key.type for n, key in k.items()} == {
        "site": "rsa", "partner": "rsa", "partner-pem": "rsa", "x": "x25519", "x-pub": "x25519",
        "pq": "pq-hybrid", "pq-pub": "pq-hybrid", "pseudo": "secret", "pseudo-raw": "secret"}

    rsa_id = public_key_id(m["rsa_a"].public_key())
    assert k["site"].key_id == k["partner"].key_id == k["partner-pem"].key_id == rsa_id
    assert k["site"].can_decrypt and not k["partner"].can_decrypt and not k["partner-pem"].can_decrypt
    assert k["site"].certificate is not None and k["partner"].certificate is not None
    assert k["partner-pem"].certificate is None
    assert k["site"].private.private_numbers() == m["rsa_a"].private_numbers()
    assert k["site"].source == str(d / "a.key") and k["partner"].source == str(d / "a.crt")

    assert k["x"].key_id == k["x-pub"].key_id == public_key_id(m["x"].public_key())
    assert k["x"].private.private_bytes_raw() == m["x"].private_bytes_raw()

    pq, pq_pub = k["pq"], k["pq-pub"]
    assert pq.key_id == pq_pub.key_id == hybrid_key_id(m["mk"].public_key(), m["mx"].public_key())
    assert isinstance(pq.public, hpke.MLKEM768X25519PublicKey)
    assert isinstance(pq.private, hpke.MLKEM768X25519PrivateKey) and pq_pub.private is None
    mlkem_part, x_part = pq_pub.parts
    assert isinstance(mlkem_part, mlkem.MLKEM768PublicKey) and isinstance(x_part, x25519.X25519PublicKey)
    assert pq_pub.parts[0].public_bytes_raw() == m["mk"].public_key().public_bytes_raw()
    # the loaded objects do what the encryption stages need: HPKE to the public, back with the private
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    assert suite.decrypt(suite.encrypt(b"data key", pq_pub.public), pq.private) == b"data key"

    assert k["pseudo"].secret == k["pseudo-raw"].secret == m["secret"]
    assert k["pseudo"].key_id == secret_key_id(m["secret"]) and k["pseudo"].public is None

    again = load(loaded.text, registry).keys  # a reload reads the files again: same IDs
    assert {n: key.key_id for n, key in again.items()} == {n: key.key_id for n, key in k.items()}
    assert again["site"] is not k["site"]
    assert by_key_id(k, k["x"].key_id).name in ("x", "x-pub") and by_key_id(k, "0" * 16) is None


def test_distinct_keys_have_distinct_ids(m, tmp_path, registry):
    put(tmp_path / "a.key", m["rsa_a.key"])
    put(tmp_path / "b.key", m["rsa_b.key"])
    put(tmp_path / "s1", os.urandom(32))
    put(tmp_path / "s2", os.urandom(32))
    k = load(config(f"""\
        a: {{private: {tmp_path}/a.key}}
        b: {{private: {tmp_path}/b.key}}
        s1: {{secret: {tmp_path}/s1}}
        s2: {{secret: {tmp_path}/s2}}
        """, tmp_path), registry).keys
    ids = [key.key_id for key in k.values()]
    assert len(set(ids)) == 4 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_encrypted_pem_with_a_password_file(m, tmp_path, registry):
    put(tmp_path / "a.key", m["rsa_a.enc"])
    put(tmp_path / "pw", b"s3cret pass\n")
    put(tmp_path / "wrong", b"not it\n")
    put(tmp_path / "plain.key", m["rsa_a.key"])
    k = load(config(f"site: {{private: {tmp_path}/a.key, password_file: {tmp_path}/pw}}\n", tmp_path),
             registry).keys
    assert k["site"].private.private_numbers() == m["rsa_a"].private_numbers()

    errs = placed_errors(config(f"""\
        nopw: {{private: {tmp_path}/a.key}}
        wrong: {{private: {tmp_path}/a.key, password_file: {tmp_path}/wrong}}
        plain: {{private: {tmp_path}/plain.key, password_file: {tmp_path}/pw}}
        nofile: {{private: {tmp_path}/a.key, password_file: {tmp_path}/missing}}
        """, tmp_path), registry)
    assert errs["keys.nopw.private"] == (f"{tmp_path}/a.key: the key is encrypted; set password_file", 2)
    assert errs["keys.wrong.private"] == (f"{tmp_path}/a.key: wrong password (password_file)", 3)
    assert errs["keys.plain.password_file"][0] == (f"the key in {tmp_path}/plain.key is not encrypted:"
                                                   " remove password_file")
    assert "does not exist" in errs["keys.nofile.password_file"][0]
    assert len(errs) == 4


def test_password_file_readable_by_others_is_refused(m, tmp_path, registry):
    put(tmp_path / "a.key", m["rsa_a.enc"])
    put(tmp_path / "pw", b"s3cret pass\n", 0o644)
    errs = placed_errors(config(f"site: {{private: {tmp_path}/a.key, password_file: {tmp_path}/pw}}\n",
                                tmp_path), registry)
    msg, line = errs["keys.site.password_file"]
    assert msg.endswith(f"chmod 600 {tmp_path}/pw") and line == 2


def test_credential_names_resolve_in_the_credentials_directory(m, tmp_path, registry, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    put(creds / "site-key", m["rsa_a.enc"], 0o440)  # as systemd makes them: group bits show its ACL
    put(creds / "site-pw", b"s3cret pass\n", 0o440)
    put(creds / "pseudo", m["secret"].hex().encode(), 0o440)
    text = config("""\
        site: {private: "credential:site-key", password_file: "credential:site-pw"}
        pseudo: {secret: "credential:pseudo"}
        """, tmp_path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    k = load(text, registry).keys
    assert k["site"].source == "credential:site-key" and k["site"].can_decrypt
    assert k["pseudo"].secret == m["secret"]

    os.chmod(creds, 0o755)  # not a directory systemd made: the files' own bits count
    errs = placed_errors(text, registry)
    assert errs["keys.site.password_file"][0].endswith(f"chmod 600 {creds}/site-pw")
    assert errs["keys.pseudo.secret"][0].endswith(f"chmod 600 {creds}/pseudo")

    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    errs = placed_errors(text, registry)
    assert "$CREDENTIALS_DIRECTORY is not set" in errs["keys.site.password_file"][0]
    assert "$CREDENTIALS_DIRECTORY is not set" in errs["keys.pseudo.secret"][0]


# --- refused files ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_private_key_or_secret_readable_by_others_is_refused(m, tmp_path, registry, mode):
    put(tmp_path / "a.key", m["rsa_a.key"], mode)
    put(tmp_path / "s", m["secret"], mode)
    put(tmp_path / "a.crt", m["rsa_a.crt"], 0o644)  # public: any mode
    errs = placed_errors(config(f"""\
        site: {{private: {tmp_path}/a.key}}
        pseudo: {{secret: {tmp_path}/s}}
        partner: {{public: {tmp_path}/a.crt}}
        """, tmp_path), registry)
    assert errs == {
        "keys.site.private": (f"{tmp_path}/a.key may be read by group or others (mode {mode:04o});"
                              f" run: chmod 600 {tmp_path}/a.key", 2),
        "keys.pseudo.secret": (f"{tmp_path}/s may be read by group or others (mode {mode:04o});"
                               f" run: chmod 600 {tmp_path}/s", 3),
    }


def test_missing_files_are_errors_with_their_place(m, tmp_path, registry):
    put(tmp_path / "a.key", m["rsa_a.key"])
    errs = placed_errors(config(f"""\
        a: {{private: {tmp_path}/nope.key}}
        b: {{public: {tmp_path}/nope.crt}}
        c: {{secret: {tmp_path}/nope}}
        d: {{private: {tmp_path}/a.key, certificate: {tmp_path}/nope.crt}}
        """, tmp_path), registry)
    assert errs == {
        "keys.a.private": (f"file {tmp_path}/nope.key does not exist", 2),
        "keys.b.public": (f"file {tmp_path}/nope.crt does not exist", 3),
        "keys.c.secret": (f"file {tmp_path}/nope does not exist", 4),
        "keys.d.certificate": (f"file {tmp_path}/nope.crt does not exist", 5),
    }


def test_garbage_and_unsupported_files_are_errors(m, tmp_path, registry):
    d = tmp_path
    put(d / "garbage", b"this is not a key\n")
    put(d / "badpem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    put(d / "ec.key", m["ec.key"])
    put(d / "small.key", m["rsa_small.key"])
    put(d / "mlkem.key", m["mlkem-only.key"])
    put(d / "order.key", m["pq-wrong-order.key"])
    put(d / "a.key", m["rsa_a.key"])
    put(d / "b.crt", m["rsa_b.crt"], 0o644)
    put(d / "a.pub", m["rsa_a.pub"], 0o644)
    put(d / "short", os.urandom(16))
    errs = placed_errors(config(f"""\
        g1: {{private: {d}/garbage}}
        g2: {{public: {d}/garbage}}
        g3: {{private: {d}/badpem}}
        ec: {{private: {d}/ec.key}}
        small: {{private: {d}/small.key}}
        mlkem: {{private: {d}/mlkem.key}}
        order: {{private: {d}/order.key}}
        leak: {{public: {d}/a.key}}
        mismatch: {{private: {d}/a.key, certificate: {d}/b.crt}}
        notcert: {{private: {d}/a.key, certificate: {d}/a.pub}}
        pemsecret: {{secret: {d}/a.key}}
        short: {{secret: {d}/short}}
        """, tmp_path), registry)
    assert errs["keys.g1.private"] == (f"{d}/garbage is not a PEM private key file", 2)
    assert errs["keys.g2.public"] == (f"{d}/garbage is not a PEM public key or certificate file", 3)
    assert errs["keys.g3.private"] == (f"{d}/badpem: invalid or unsupported private key data", 4)
    assert "keys are rsa, x25519 or pq-hybrid" in errs["keys.ec.private"][0]
    assert errs["keys.small.private"][0] == (f"{d}/small.key: RSA key of 2048 bits; new use needs 3072 or more"
                                             " (keep an old key with retired: true to decrypt only)")
    assert "the ML-KEM-768 key, then the X25519 key" in errs["keys.mlkem.private"][0]
    assert "the ML-KEM-768 key, then the X25519 key" in errs["keys.order.private"][0]
    assert errs["keys.leak.public"][0] == f"{d}/a.key holds a private key: name it with private: (and chmod 600 it)"
    assert errs["keys.mismatch.certificate"][0] == f"the certificate {d}/b.crt does not belong to the private key"
    assert errs["keys.notcert.certificate"][0] == f"{d}/a.pub is a public key, not a certificate"
    assert "is a PEM file; secret: takes a file of random bytes" in errs["keys.pemsecret.secret"][0]
    assert errs["keys.short.secret"][0] == f"{d}/short: a secret needs 32 bytes or more (got 16)"
    assert len(errs) == 12


def test_small_rsa_key_is_accepted_when_retired(m, tmp_path, registry):
    put(tmp_path / "small.key", m["rsa_small.key"])
    k = load(config(f"old: {{private: {tmp_path}/small.key, retired: true}}\n", tmp_path), registry).keys
    assert k["old"].retired and k["old"].public.key_size == 2048


# --- the YAML never holds material ----------------------------------------------------------


def test_inline_key_material_is_refused_without_echoing_it(m, tmp_path, registry):
    pem = m["rsa_a.key"].decode()
    body = pem.splitlines()[1]
    b64 = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
    hexkey = m["secret"].hex()
    text = "keys:\n  block:\n    private: |\n" + textwrap.indent(pem, "      ") + textwrap.indent(textwrap.dedent(f"""\
        quoted: {{private: "{pem.splitlines()[0]}"}}
        b64: {{secret: {b64}}}
        hex: {{secret: {hexkey}}}
        field: {{key: {hexkey}}}
        material: {{material: {b64}}}
        bare: {b64}
        notmapping: /etc/pacsguard/keys/site.key
        slashed: {{secret: "{b64[:20]}/{b64}"}}
        """), "  ")
    with pytest.raises(ConfigError) as info:
        load(text, registry)
    errors = info.value.errors
    joined = "\n".join(errors)
    for secret_text in (body, b64, hexkey, pem.splitlines()[0]):
        assert secret_text not in joined, "an error echoes key material"
    places = {e.split(":", 1)[0]: e for e in errors}
    inline = "looks like key material written inline"
    for place in ("keys.block.private", "keys.quoted.private", "keys.b64.secret", "keys.hex.secret", "keys.bare",
                  "keys.slashed.secret"):
        assert inline in places.get(place, ""), (place, errors)
    assert "'key': keys are never written in the config" in places["keys.field"]
    assert "'material': keys are never written in the config" in places["keys.material"]
    assert "expected a mapping: {private: FILE}" in places["keys.notmapping"]
    assert len(errors) == 9


@pytest.mark.parametrize("entry, message", [
    ("{}", "give exactly one of private, public"),
    ("{private: /a, secret: /b}", "give exactly one of private, public (a certificate or public key) or secret"
                                  " (got private, secret)"),
    ("{public: /a, password_file: /b}", "password_file and certificate go with private"),
    ("{secret: /a, certificate: /b}", "password_file and certificate go with private"),
    ("{public: /a, retired: true}", "retired keys are kept to decrypt"),
    ("{private: /a, colour: red}", "unknown key 'colour'"),
    ("{private: 'credential:a/b'}", "credential:NAME"),
])
def test_malformed_entries_are_refused_with_their_place(tmp_path, registry, entry, message):
    errs = placed_errors(config(f"k: {entry}\n", tmp_path), registry)
    [(place, (msg, line))] = errs.items()
    assert place.startswith("keys.k") and message in msg and line == 2


def test_key_names_follow_the_naming_rule(tmp_path, registry):
    errs = placed_errors(config("'bad name': {secret: /x}\n", tmp_path), registry)
    assert any("key name 'bad name' must match" in msg for msg, _ in errs.values())


# --- the stages' uses, checked at config load ----------------------------------------------------


@pytest.fixture
def keyfiles(m, tmp_path):
    put(tmp_path / "a.key", m["rsa_a.key"])
    put(tmp_path / "a.crt", m["rsa_a.crt"], 0o644)
    put(tmp_path / "a.pub", m["rsa_a.pub"], 0o644)
    put(tmp_path / "x.key", m["x.key"])
    put(tmp_path / "pq.pub", m["pq.pub"], 0o644)
    put(tmp_path / "s", m["secret"])
    put(tmp_path / "small.key", m["rsa_small.key"])
    return f"""\
        site: {{private: {tmp_path}/a.key, certificate: {tmp_path}/a.crt}}
        partner: {{public: {tmp_path}/a.pub}}
        x: {{private: {tmp_path}/x.key}}
        pq: {{public: {tmp_path}/pq.pub}}
        pseudo: {{secret: {tmp_path}/s}}
        old: {{private: {tmp_path}/small.key, retired: true}}
        broken: {{private: {tmp_path}/missing.key}}
        """


def test_stage_key_uses_that_fit_load(keyfiles, tmp_path, registry):
    loaded = load(config(keyfiles.replace("        broken:", "        #broken:"), tmp_path, """\
        - test-seal: {recipients: [partner, x, pq], cms_to: [site], decrypt_with: old, pseudonym: pseudo}
        """), registry)
    assert [s.name for s in loaded.pipelines["r"]] == ["test-seal"]


def test_stage_key_uses_are_checked_with_their_place(keyfiles, tmp_path, registry):
    text = config(keyfiles, tmp_path, """\
        - test-seal: {recipients: [partner, nobody]}
        - test-seal:
            recipients: [pseudo, old]
            cms_to: [partner]
            decrypt_with: pq
            pseudonym: x
        - test-seal: {recipients: [broken]}
        """)
    errs = placed_errors(text, registry)
    assert errs.pop("keys.broken.private")[0] == f"file {tmp_path}/missing.key does not exist"
    assert errs == {
        "routes[0].pipeline[0].test-seal.recipients[1]": (
            "unknown key 'nobody' (keys: broken, old, partner, pq, pseudo, site, x)", 15),
        "routes[0].pipeline[1].test-seal.recipients[0]": (
            "keys.pseudo is a secret key; test-seal needs pq-hybrid or rsa or x25519", 17),
        "routes[0].pipeline[1].test-seal.recipients[1]": (
            "keys.old is retired (kept to decrypt older objects); test-seal cannot use it for new ones", 17),
        "routes[0].pipeline[1].test-seal.cms_to[0]": (
            "keys.partner has no certificate; test-seal needs one (certificate: with private:, or the"
            " certificate as public:)", 18),
        "routes[0].pipeline[1].test-seal.decrypt_with": (
            "keys.pq has only a public key; test-seal needs the private key", 19),
        "routes[0].pipeline[1].test-seal.pseudonym": ("keys.x is a x25519 key; test-seal needs secret", 20),
    }  # 'broken' failed to load: its own error says why, no second one at the use


def test_no_keys_configured_says_so(tmp_path, registry):
    errs = placed_errors(config("", tmp_path, "- test-seal: {recipients: [partner]}\n"), registry)
    assert errs == {
        "routes[0].pipeline[0].test-seal.recipients[0]": ("unknown key 'partner' (keys: none configured)", 7)}


# --- what stages get ------------------------------------------------------------------------------


def test_repr_and_errors_never_show_material(m, tmp_path, registry):
    put(tmp_path / "a.key", m["rsa_a.key"])
    put(tmp_path / "pq.key", m["pq.key"])
    put(tmp_path / "s", m["secret"].hex().encode())
    k = load(config(f"""\
        site: {{private: {tmp_path}/a.key}}
        pq: {{private: {tmp_path}/pq.key}}
        pseudo: {{secret: {tmp_path}/s}}
        """, tmp_path), registry).keys
    shown = repr(k) + repr(list(k.values())) + str(dict(k))
    assert "Key(name='site', type='rsa', key_id=" in shown
    for line in (m["rsa_a.key"] + m["pq.key"]).decode().splitlines():
        if not line.startswith("-----"):
            assert line not in shown
    assert m["secret"].hex() not in shown and repr(m["secret"]) not in shown


def test_items_share_one_read_only_mapping_per_generation(m, tmp_path, registry):
    put(tmp_path / "s", m["secret"])
    loaded = load(config(f"pseudo: {{secret: {tmp_path}/s}}\n", tmp_path), registry)
    runtime = build_runtime(loaded, registry)
    assert runtime.keys is loaded.keys
    facts = TransportFacts(source="t", source_type="folder")
    a = Item(1, tmp_path / "x", facts, keys=runtime.keys)
    b = Item(2, tmp_path / "y", facts, keys=runtime.keys)
    assert a.keys is b.keys is runtime.keys
    with pytest.raises(TypeError):
        a.keys["other"] = a.keys["pseudo"]  # type: ignore[index]
    plain = {"pseudo": loaded.keys["pseudo"]}
    c = Item(3, tmp_path / "z", facts, keys=plain)
    assert isinstance(c.keys, MappingProxyType) and dict(c.keys) == plain
    plain.clear()
    assert "pseudo" in c.keys  # a plain dict is copied: later changes do not reach the item
    assert dict(Item(4, tmp_path / "w", facts).keys) == {}


def test_a_reload_swaps_the_keys_for_the_items_processed_after_it(m, tmp_path, registry, pm):
    """The processor takes the runtime per batch: items built after the swap see the new
    generation's keys (the files are read again, at reload, not per image)."""
    put(tmp_path / "a.key", m["rsa_a.key"])
    put(tmp_path / "b.key", m["rsa_b.key"])
    pipeline = "- test-seal: {recipients: [site]}\n"
    first = load(config(f"site: {{private: {tmp_path}/a.key}}\n", tmp_path, pipeline), registry)
    second = load(config(f"site: {{private: {tmp_path}/b.key}}\n", tmp_path, pipeline), registry)
    state = {"runtime": build_runtime(first, registry)}
    spool = Spool(tmp_path / "spool")
    try:
        proc = Processor(spool, pm.hook, lambda: state["runtime"], workers=1)

        def ingest() -> int:
            p = tmp_path / f"{uuid.uuid4().hex}.dcm"
            shutil.copyfile(get_testdata_file("CT_small.dcm"), p)
            return spool.ingest_file(p, TransportFacts(source="t", source_type="folder"))

        Seal.seen.clear()
        proc.process([ingest(), ingest()])
        state["runtime"] = build_runtime(second, registry, 1)
        proc.process([ingest()])
    finally:
        spool.close()
    old_id, new_id = public_key_id(m["rsa_a"].public_key()), public_key_id(m["rsa_b"].public_key())
    assert [ids for _, ids in Seal.seen] == [{"site": old_id}, {"site": old_id}, {"site": new_id}]
    assert Seal.seen[0][0] is Seal.seen[1][0] is first.keys  # one mapping for the generation
    assert Seal.seen[2][0] is second.keys


def test_the_embedded_default_config_makes_its_demo_keys(registry, tmp_path, monkeypatch):
    """The embedded default runs out of the box: its two keys are made in
    ./pacsguard-data/keys on first use (private halves 0600), and kept after that."""
    from pacsguard.daemon.config import load_config

    monkeypatch.chdir(tmp_path)
    loaded = load_config(None, registry)
    keys = dict(loaded.keys)
    assert sorted(keys) == ["demo-partner", "demo-site"]
    assert keys["demo-site"].type == "secret" and keys["demo-partner"].type == "rsa"
    assert keys["demo-partner"].certificate is not None and keys["demo-partner"].private is not None
    folder = tmp_path / "pacsguard-data" / "keys"
    assert (folder / "demo-site.key").stat().st_mode & 0o777 == 0o600
    assert (folder / "demo-partner.key").stat().st_mode & 0o777 == 0o600
    again = load_config(None, registry)
    assert {n: k.key_id for n, k in again.keys.items()} == {n: k.key_id for n, k in keys.items()}
    assert dict(build_runtime(loaded, registry).keys) == keys
