"""Replay of the Linux IMA runtime measurement log against the PCR it extends (10 by
default), as the kernel extends it.

Templates: ima-ng (fields d-ng, n-ng), ima-sig (d-ng, n-ng, sig) and ima-buf (d-ng, n-ng,
buf): the template digest is H(template data), the data being each field as u32 length
(little-endian) || bytes - exactly the bytes the binary log carries. Every PCR bank gets its
own digest (H of the bank's algorithm over the same data, the kernel's rule since 5.8); a
violation is logged with a zero digest and extends 0xFF...FF.

Formats:
* binary (`binary_runtime_measurements[_sha256|...]`): u32 PCR | template digest (20 bytes
  for the SHA-1 file, the bank's size for the others) | u32 name length | name | u32 data
  length | data; little-endian (x86, or ima_canonical_fmt). The digest's size is found from
  the log. Each bank's value is computed from the template data.
* ASCII (`ascii_runtime_measurements[_sha256]`): `PCR digest template d-ng-hash path [sig]`
  lines. The template data is rebuilt from the fields and must hash to the digest given;
  only the digest's own bank can be replayed (20 bytes: sha1, 32: sha256...).
"""
import hashlib
import struct

SIZES = {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}
TEMPLATES = {"ima-ng": 2, "ima-sig": 3, "ima-buf": 3}


class ImaLogError(ValueError):
    """A log that cannot be read, or an entry whose digest is not its data's."""


def replay(log: bytes, banks) -> tuple:
    """({(bank, pcr): value}, entries) for the banks asked (names, e.g. ("sha256",)) that the
    log can give; raises ImaLogError."""
    log = bytes(log)
    if not log:
        raise ImaLogError("the IMA log is empty")
    try:
        if _looks_ascii(log):
            entries = _ascii_entries(log.decode("ascii"))
        else:
            entries = _binary_entries(log)
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ImaLogError(f"malformed IMA log ({type(e).__name__})") from None
    values = {}
    for pcr, digest, name, data in entries:
        for bank in banks:
            width = hashlib.new(bank).digest_size
            if data is None and SIZES.get(len(digest)) != bank:
                continue                    # ASCII: only the digest's own bank
            key = (bank, pcr)
            current = values.get(key, bytes(width))
            if not any(digest):
                extend = b"\xff" * width                # a violation
            elif data is None:
                extend = digest
            else:
                extend = hashlib.new(bank, data).digest()
            values[key] = hashlib.new(bank, current + extend).digest()
    return values, len(entries)


def _looks_ascii(log: bytes) -> bool:
    head = log[:80]
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head) and head[:3].strip()[:1] \
        .isdigit()


def _fields(data: bytes) -> list:
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        field = data[pos + 4:pos + 4 + size]
        if len(field) != size:
            raise ImaLogError("a template field runs past its entry")
        out.append(field)
        pos += 4 + size
    return out


def _binary_entries(log: bytes) -> list:
    errors = []
    for size in (20, 32, 48, 64):
        try:
            return _binary_with(log, size)
        except ImaLogError as e:
            errors.append(e)
        except (struct.error, UnicodeDecodeError) as e:
            errors.append(ImaLogError(f"malformed ({type(e).__name__})"))
    # the digest size that read the most entries tells the real fault
    best = max(errors, key=lambda e: getattr(e, "progress", 0))
    if getattr(best, "progress", 0):
        raise best
    raise ImaLogError(f"not an IMA binary log ({best})")


def _binary_with(log: bytes, size: int) -> list:
    entries = []
    try:
        return _binary_loop(log, size, entries)
    except ImaLogError as e:
        e.progress = len(entries) + (1 if "edited" in str(e) else 0)
        raise


def _binary_loop(log: bytes, size: int, entries: list) -> list:
    pos = 0
    while pos < len(log):
        (pcr,) = struct.unpack_from("<I", log, pos)
        if pcr > 23:
            raise ImaLogError(f"entry for PCR {pcr}")
        digest = log[pos + 4:pos + 4 + size]
        pos += 4 + size
        (name_len,) = struct.unpack_from("<I", log, pos)
        if not 0 < name_len <= 255:
            raise ImaLogError("template name length out of range")
        name = log[pos + 4:pos + 4 + name_len].decode("ascii", "replace")
        pos += 4 + name_len
        if name not in TEMPLATES:
            raise ImaLogError(f"template {name!r} is not replayed (ima-ng, ima-sig, ima-buf)")
        (data_len,) = struct.unpack_from("<I", log, pos)
        data = log[pos + 4:pos + 4 + data_len]
        if len(data) != data_len:
            raise ImaLogError("truncated entry")
        pos += 4 + data_len
        fields = _fields(data)
        if len(fields) != TEMPLATES[name]:
            raise ImaLogError(f"{name} entry with {len(fields)} fields")
        if any(digest) and hashlib.new(SIZES[size], data).digest() != digest:
            raise ImaLogError(f"entry {len(entries)}: the template digest is not the "
                              f"{SIZES[size]} of its data (an edited entry)")
        entries.append((pcr, digest, name, data))
    return entries


def _ascii_entries(text: str) -> list:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) < 5:
            raise ImaLogError(f"line {number}: not 'PCR digest template hash path'")
        pcr, digest_hex, name, file_hash = parts[0], parts[1], parts[2], parts[3]
        if not pcr.isdigit() or int(pcr) > 23:
            raise ImaLogError(f"line {number}: PCR {pcr!r}")
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            raise ImaLogError(f"line {number}: the template digest is not hex") from None
        if len(digest) not in SIZES:
            raise ImaLogError(f"line {number}: a {len(digest)}-byte template digest")
        if name not in TEMPLATES:
            raise ImaLogError(f"line {number}: template {name!r} is not replayed")
        extra = TEMPLATES[name] - 2
        path = " ".join(parts[4:len(parts) - extra] if extra and len(parts) > 5 else parts[4:])
        algo, sep, hex_digest = file_hash.partition(":")
        try:
            file_digest = bytes.fromhex(hex_digest)
        except ValueError:
            raise ImaLogError(f"line {number}: the file digest is not hex") from None
        if not sep:
            raise ImaLogError(f"line {number}: the file digest has no 'algo:' prefix")
        fields = [algo.encode() + b":\0" + file_digest, path.encode() + b"\0"]
        if extra:
            tail = parts[-1] if len(parts) > 5 else ""
            try:
                fields.append(bytes.fromhex(tail))
            except ValueError:
                raise ImaLogError(f"line {number}: the {name} field is not hex") from None
        data = b"".join(struct.pack("<I", len(f)) + f for f in fields)
        if any(digest) and hashlib.new(SIZES[len(digest)], data).digest() != digest:
            raise ImaLogError(f"line {number}: the template digest is not the "
                              f"{SIZES[len(digest)]} of its fields (an edited entry)")
        entries.append((int(pcr), digest, name, None))
    return entries


def entry(path: str, file_digest: bytes, *, algo: str = "sha256", sig: bytes | None = None,
          pcr: int = 10, log_digest: str = "sha1") -> tuple:
    """(binary entry, ASCII line, template data) for one file measurement (what the kernel
    writes), for tests and for tools that build logs."""
    name = "ima-sig" if sig is not None else "ima-ng"
    fields = [algo.encode() + b":\0" + file_digest, path.encode() + b"\0"]
    if sig is not None:
        fields.append(sig)
    data = b"".join(struct.pack("<I", len(f)) + f for f in fields)
    digest = hashlib.new(log_digest, data).digest()
    binary = (struct.pack("<I", pcr) + digest + struct.pack("<I", len(name)) + name.encode()
              + struct.pack("<I", len(data)) + data)
    line = f"{pcr} {digest.hex()} {name} {algo}:{file_digest.hex()} {path}"
    if sig is not None:
        line += f" {sig.hex()}"
    return binary, line + "\n", data
