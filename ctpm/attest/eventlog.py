"""Replay of the TCG PC Client firmware event log (crypto-agile format, TCG PC Client
Platform Firmware Profile §10): the PCR values the log says, to compare with quoted ones."""
import hashlib
import struct

EV_NO_ACTION = 0x00000003
ALGS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


class EventLogError(ValueError):
    """A log that cannot be read."""


def replay(log: bytes) -> dict:
    """{(bank, pcr): value} for every PCR the log extends (and PCR 0's start value when a
    StartupLocality event says so)."""
    log = bytes(log)
    try:
        return _replay(log)
    except (struct.error, IndexError, KeyError) as e:
        raise EventLogError(f"malformed event log ({type(e).__name__})") from None


def _replay(log: bytes) -> dict:
    if len(log) < 32:
        raise EventLogError("event log shorter than its first event")
    size = struct.unpack_from("<I", log, 28)[0]
    spec = log[32:32 + size]
    if spec[:16] != b"Spec ID Event03\0":
        raise EventLogError("not a crypto-agile log (no Spec ID Event03)")
    count = struct.unpack_from("<I", spec, 24)[0]
    sizes = {}
    for i in range(count):
        alg, digest_size = struct.unpack_from("<HH", spec, 28 + 4 * i)
        sizes[alg] = digest_size
    pcrs, start = {}, {}
    off = 32 + size
    while off + 12 <= len(log):
        pcr, event_type, n = struct.unpack_from("<III", log, off)
        if pcr == 0xFFFFFFFF or (pcr == 0 and event_type == 0 and n == 0):
            break
        if pcr > 23:
            raise EventLogError(f"event for PCR {pcr}")
        off += 12
        digests = []
        for _ in range(n):
            alg = struct.unpack_from("<H", log, off)[0]
            if alg not in sizes:
                raise EventLogError(f"digest of algorithm {alg:#x} the header does not list")
            digests.append((alg, log[off + 2:off + 2 + sizes[alg]]))
            off += 2 + sizes[alg]
        event_size = struct.unpack_from("<I", log, off)[0]
        event = log[off + 4:off + 4 + event_size]
        if len(event) != event_size:
            raise EventLogError("truncated event")
        off += 4 + event_size
        if event_type == EV_NO_ACTION:
            if event.startswith(b"StartupLocality\0") and len(event) >= 17:
                start[0] = event[16]
            continue
        for alg, digest in digests:
            name = ALGS.get(alg)
            if name is None:
                continue
            width = hashlib.new(name).digest_size
            if (name, pcr) not in pcrs:
                first = bytes(width - 1) + bytes([start.get(pcr, 0)]) if pcr in start \
                    else bytes(width)
                pcrs[name, pcr] = first
            pcrs[name, pcr] = hashlib.new(name, pcrs[name, pcr] + digest).digest()
    return pcrs
