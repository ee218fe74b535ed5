"""Seeded mutations of real DICOM files, of the kinds an independent fuzz sweep found
faults with: bit flips, broken VRs and lengths, truncation, deflate bombs, codestreams
that lie about their size, non-ASCII UIDs, deep sequence nesting, missing File Meta,
garbage. Each mutation is (kind, bytes); the same seed gives the same list.

The data set is mutated after the File Meta Information (kept intact, so that a network
sender can still name the SOP class and instance); some kinds mutate the meta too, for
the folder path only (``network=False``).
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom.data import get_testdata_file

SEEDS = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb.dcm",
         "MR_small_RLE.dcm", "J2K_pixelrep_mismatch.dcm", "emri_small.dcm")


@dataclass(frozen=True)
class Mutation:
    kind: str
    data: bytes
    network: bool = True  # the File Meta Information is intact: a C-STORE can carry it


def meta_end(data: bytes) -> int:
    """Offset of the first byte after the File Meta Information."""
    if data[128:132] != b"DICM":
        return 0
    group_length = struct.unpack_from("<I", data, 140)[0]
    return 144 + group_length


def corpus() -> list[bytes]:
    return [Path(get_testdata_file(name)).read_bytes() for name in SEEDS]


def _elements(data: bytes, start: int, limit: int = 4096) -> list[int]:
    """Offsets of explicit VR element headers (an even group, then two upper-case letters)
    in the first bytes of the data set."""
    out = []
    for i in range(start, min(len(data) - 12, start + limit), 2):
        vr = data[i + 4:i + 6]
        if data[i] % 2 == 0 and vr.isalpha() and vr.isupper():
            out.append(i)
    return out


def bit_flips(rng, data):
    out = bytearray(data)
    start = meta_end(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(start, min(len(out), start + 2048))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def bad_vr(rng, data):
    out = bytearray(data)
    heads = _elements(data, meta_end(data))
    if heads:
        i = rng.choice(heads)
        out[i + 4:i + 6] = rng.choice([b"XY", b"\x00\x00", b"ZZ", b"ui", b"Q?"])
    return bytes(out)


def bad_length(rng, data):
    out = bytearray(data)
    heads = _elements(data, meta_end(data))
    if heads:
        i = rng.choice(heads)
        value = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFF, 1, 3, rng.randrange(1 << 16)])
        vr = bytes(out[i + 4:i + 6])
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"UC", b"UR"):
            struct.pack_into("<I", out, i + 8, value)
        else:
            struct.pack_into("<H", out, i + 6, value & 0xFFFF)
    return bytes(out)


def truncated(rng, data):
    start = meta_end(data)
    return data[:rng.randrange(start + 1, len(data))]


def non_ascii_uid(rng, data):
    out = bytearray(data)
    start = meta_end(data)
    at = out.find(b"UI", start)
    if at > 0:
        length = struct.unpack_from("<H", out, at + 2)[0]
        if length:
            out[at + 4 + rng.randrange(length)] = rng.choice([0xE9, 0xFF, 0x80, 0x00])
    return bytes(out)


def deep_nesting(rng, data):
    levels = rng.choice([50, 500, 3000])
    body = b""
    for _ in range(levels):
        body = (struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
                + body + b"\xfe\xff\x0d\xe0\0\0\0\0\xfe\xff\xdd\xe0\0\0\0\0")
    start = meta_end(data)
    at = data.find(b"\x10\x00\x10\x00", start)
    at = at if at > 0 else start
    return data[:at] + body + data[at:]


def no_file_meta(rng, data):
    return data[meta_end(data):]


def garbage(rng, data):
    return rng.choice([b"", b"\0" * rng.randrange(1, 300), bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))),
                       b"PK\x03\x04 not an image", b"DICM" * 100])


@functools.lru_cache(maxsize=4)
def _zeros_deflated(mib: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join(deflater.compress(chunk) for _ in range(mib)) + deflater.flush()


def deflate_bomb(rng, data):
    """A Deflated Explicit VR LE object: meta of ``data`` with the deflated syntax, then a
    deflated body of a few MB that inflates to 1-4 GiB of zeros inside one long element."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info

    src = DicomBytesIO(data)
    read_preamble(src, False)
    meta_ds = _read_file_meta_info(src)
    meta_ds.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta_ds, enforce_standard=True)
    meta = buf.getvalue()
    body = b"\x08\x00\x16\x00UI" + struct.pack("<H", 2) + b"1\0" + b"\x09\x00\x10\x00OB\0\0" + struct.pack("<I", 0xF0000000)
    # a deflate stream may be cut into blocks: the body's block, then the zeros' stream
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = head.compress(body) + head.flush(zlib.Z_FULL_FLUSH)
    return bytes(meta) + first + _zeros_deflated(rng.choice([512, 1024]))


def lying_codestream(rng, data):
    out = bytearray(data)
    at = out.find(b"\xff\x4f\xff\x51")
    if at > 0:
        w, h = rng.choice([(60000, 60000), (1, 1), (65535, 3), (0, 512)])
        struct.pack_into(">II", out, at + 8, w, h)
    return bytes(out)


KINDS = {
    "bit-flips": bit_flips, "bad-vr": bad_vr, "bad-length": bad_length, "truncated": truncated,
    "non-ascii-uid": non_ascii_uid, "deep-nesting": deep_nesting, "lying-codestream": lying_codestream,
    "no-file-meta": no_file_meta, "garbage": garbage, "deflate-bomb": deflate_bomb,
}
#: kinds whose result a network sender cannot carry (no meta to name the object)
FOLDER_ONLY = {"no-file-meta", "garbage"}
#: kinds that are expensive to make: fewer of them
RARE = {"deflate-bomb": 0.05, "deep-nesting": 0.1}


def mutations(seed: int, count: int, sources: list[bytes] | None = None) -> list[Mutation]:
    rng = random.Random(seed)
    sources = sources or corpus()
    kinds = list(KINDS)
    weights = [RARE.get(k, 1.0) for k in kinds]
    out = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        src = rng.choice(sources)
        if kind == "lying-codestream":
            src = next((s for s in sources if b"\xff\x4f\xff\x51" in s), src)
        out.append(Mutation(kind, KINDS[kind](rng, src), network=kind not in FOLDER_ONLY))
    return out
