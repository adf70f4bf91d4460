"""The training faces in fewer bytes for the GPU machine, losslessly (64 MiB travel there in all).

The CelebA 64 px JPEGs of ``train.zip`` are ~1.6 KB each, and 623 bytes of that is the same
JFIF header (quantisation and Huffman tables) in every file. ``pack`` stores that header once
and each file's remaining bytes (a file whose header differs is stored whole), with the SHA-256
of every original file; ``unpack`` rebuilds a ZIP_STORED zip of byte-identical files and checks
each digest, so the GPU trains on exactly the files here (40 MB -> ~25 MB).

    python scripts/device_data.py pack ../shared/data/celeba64/train.zip device_data/train.jpgs
    python scripts/device_data.py unpack device_data/train.jpgs device_data/train.zip
    python scripts/device_data.py head ../shared/data/celeba64/val.zip device_data/val.zip 300
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import struct
import sys
import zipfile

MAGIC = b"ODJPGS01"


def _header_end(data: bytes) -> int:
    """Byte offset just past the JPEG's start-of-scan segment (0 when it is not a plain JPEG)."""
    j = data.find(b"\xff\xda")
    if not data.startswith(b"\xff\xd8") or j < 0 or j + 4 > len(data):
        return 0
    return j + 2 + struct.unpack(">H", data[j + 2 : j + 4])[0]


def pack(src: str, dst: str) -> None:
    with zipfile.ZipFile(src) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        files = [zf.read(n) for n in names]
    heads = collections.Counter(f[: _header_end(f)] for f in files if _header_end(f))
    header = heads.most_common(1)[0][0] if heads else b""
    tmp = dst + ".tmp"
    with open(tmp, "wb") as out:
        out.write(MAGIC + struct.pack("<II", len(header), len(names)) + header)
        for name, data in zip(names, files):
            whole = not (header and data.startswith(header))
            body = data if whole else data[len(header) :]
            raw = name.encode()
            out.write(struct.pack("<HBI", len(raw), whole, len(body)) + raw + hashlib.sha256(data).digest() + body)
    os.replace(tmp, dst)
    shared = sum(not (header and f.startswith(header)) for f in files)
    print(f"{len(names)} files, {sum(map(len, files)) / 1e6:.1f} MB -> {os.path.getsize(dst) / 1e6:.1f} MB "
          f"({len(header)}-byte shared header, {shared} stored whole)")


def unpack(src: str, dst: str) -> None:
    with open(src, "rb") as fh:
        blob = fh.read()
    if not blob.startswith(MAGIC):
        sys.exit(f"{src}: not a device_data.py pack")
    hlen, count = struct.unpack_from("<II", blob, len(MAGIC))
    pos = len(MAGIC) + 8
    header = blob[pos : pos + hlen]
    pos += hlen
    tmp = dst + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for _ in range(count):
            nlen, whole, blen = struct.unpack_from("<HBI", blob, pos)
            pos += 7
            name = blob[pos : pos + nlen].decode()
            digest = blob[pos + nlen : pos + nlen + 32]
            pos += nlen + 32
            body = blob[pos : pos + blen]
            pos += blen
            data = body if whole else header + body
            if hashlib.sha256(data).digest() != digest:
                os.remove(tmp)
                sys.exit(f"{src}: {name} does not match its digest (damaged pack)")
            zf.writestr(name, data)
    if pos != len(blob):
        os.remove(tmp)
        sys.exit(f"{src}: {len(blob) - pos} trailing bytes (damaged pack)")
    os.replace(tmp, dst)
    print(f"{count} files -> {dst} ({os.path.getsize(dst) / 1e6:.1f} MB)")


def head(src: str, dst: str, n: int) -> None:
    with zipfile.ZipFile(src) as zin:
        names = sorted(m for m in zin.namelist() if not m.endswith("/"))[:n]
        tmp = dst + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
            for name in names:
                zout.writestr(name, zin.read(name))
    os.replace(tmp, dst)
    print(f"first {len(names)} files of {src} -> {dst} ({os.path.getsize(dst) / 1e6:.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("pack", "unpack", "head"):
        p = sub.add_parser(cmd)
        p.add_argument("src")
        p.add_argument("dst")
        if cmd == "head":
            p.add_argument("n", type=int, help="the first N names (sorted), as --limit N takes them")
    args = ap.parse_args()
    if args.cmd == "head":
        head(args.src, args.dst, args.n)
    else:
        (pack if args.cmd == "pack" else unpack)(args.src, args.dst)


if __name__ == "__main__":
    main()
