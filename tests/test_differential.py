"""Differential tests: the same command streams to ctpm and to swtpm (libtpms), compared.

Responses must match byte for byte where the TPM's answer is determined by the spec
(PCR values, digests, error codes); where it legitimately differs (random bytes, clocks,
tickets keyed by secret proofs, vendor properties) the response code and shape must match.
"""
import pytest

from ctpm.engine.tpm import Tpm
from tests.peers import Swtpm, needs_swtpm
from tests.tpmcmd import (STARTUP_CLEAR, STARTUP_STATE, SHUTDOWN_CLEAR, SHUTDOWN_STATE, b2, cmd,
                          pcr_select, pw_session, rc, u16, u32)

pytestmark = [needs_swtpm, pytest.mark.swtpm]

SHA1, SHA256, SHA384, SHA512 = 0x04, 0x0B, 0x0C, 0x0D
RH_OWNER, RH_NULL, RH_PLATFORM = 0x40000001, 0x40000007, 0x4000000C
PW = [pw_session()]

# Commands whose responses may differ legitimately: compare the code and the length only.
SHAPE_ONLY = {0x17B, 0x181}       # GetRandom, ReadClock


# Where ctpm follows the specification and swtpm 0.7 (libtpms 0.9) does not:
# - a tag other than TPM_ST_(NO_)SESSIONS is TPM_RC_BAD_TAG (Part 2 TPMI_ST_COMMAND_TAG);
#   swtpm answers TPM_RC_VALUE (0x084).
KNOWN_DEVIATIONS = {0x01E: "bad tag", 0x084: "bad tag"}


def extend(pcr, *digests, sessions=PW):
    body = u32(len(digests)) + b"".join(u16(a) + d for a, d in digests)
    return cmd(0x182, body, handles=[pcr], sessions=sessions)


def event(pcr, data, sessions=PW):
    return cmd(0x13C, b2(data), handles=[pcr], sessions=sessions)


def reset(pcr, sessions=PW):
    return cmd(0x13D, handles=[pcr], sessions=sessions)


def read(*banks):
    return cmd(0x17E, pcr_select(*banks))


def hash_(data, alg=SHA256, hierarchy=RH_NULL):
    return cmd(0x17D, b2(data) + u16(alg) + u32(hierarchy))


def getcap(cap, prop, count):
    return cmd(0x17A, u32(cap) + u32(prop) + u32(count))


ALL_PCRS = list(range(24))
READ_ALL = [read((alg, ALL_PCRS[i:i + 8])) for alg in (SHA1, SHA256, SHA384, SHA512)
            for i in (0, 8, 16)]

STREAMS = {
    "before-startup": [read((SHA256, [0])), cmd(0x17B, u16(8)), SHUTDOWN_CLEAR, STARTUP_STATE,
                       STARTUP_CLEAR, STARTUP_CLEAR],
    "pcr-initial-values": [STARTUP_CLEAR] + READ_ALL,
    "pcr-extend-all-banks": [
        STARTUP_CLEAR,
        extend(0, (SHA1, b"\x11" * 20), (SHA256, b"\x22" * 32), (SHA384, b"\x33" * 48),
               (SHA512, b"\x44" * 64)),
        extend(16, (SHA256, b"\x01" * 32)),
        extend(23, (SHA1, b"\x01" * 20)),
        extend(RH_NULL, (SHA256, b"\x01" * 32)),
    ] + READ_ALL,
    "pcr-event": [STARTUP_CLEAR, event(10, b"hello"), event(RH_NULL, b"x" * 1024),
                  event(10, b""), event(10, b"x" * 1025)] + READ_ALL,
    "pcr-read-limits": [
        STARTUP_CLEAR,
        read((SHA256, ALL_PCRS)),                   # more than 8: truncated selection
        read((SHA1, [0, 1, 2]), (SHA256, ALL_PCRS), (SHA512, [5])),
        read(),                                     # empty selection
        read((SHA256, [])),
        cmd(0x17E, u32(1) + u16(SHA256) + bytes([4]) + b"\xff\xff\xff\xff"),   # sizeofSelect 4
        cmd(0x17E, u32(1) + u16(SHA256) + bytes([2]) + b"\xff\xff"),           # sizeofSelect 2
        cmd(0x17E, u32(1) + u16(SHA256) + bytes([3]) + b"\xff\xff"),           # truncated
        cmd(0x17E, u32(5) + pcr_select((SHA256, [1]))[4:] * 5),               # count > HASH_COUNT
        cmd(0x17E, u32(1) + u16(0x0027) + bytes([3]) + b"\x01\0\0"),          # SHA3: not a hash here
        cmd(0x17E, u32(1) + u16(0x0010) + bytes([3]) + b"\x01\0\0"),          # ALG_NULL
    ],
    "pcr-reset-localities": [
        STARTUP_CLEAR,
        reset(0), reset(16), reset(23), reset(17), reset(20), reset(24), reset(RH_NULL),
        extend(16, (SHA256, b"\x05" * 32)), reset(16),
    ] + READ_ALL,
    "pcr-extend-errors": [
        STARTUP_CLEAR,
        extend(24, (SHA256, b"\x01" * 32)),                   # handle out of range
        extend(0, (SHA256, b"\x01" * 31)),                    # digest too short
        extend(0, (0x0027, b"\x01" * 32)),                    # unknown hash (SHA3-256)
        extend(0, (0x0010, b"")),                             # ALG_NULL not allowed
        extend(0, (SHA256, b"\x01" * 32), sessions=None),     # auth missing
        extend(0, (SHA256, b"\x01" * 32), sessions=[pw_session(b"wrong")]),
        extend(0, (SHA256, b"\x01" * 32), sessions=[pw_session(nonce=b"n")]),
        extend(0, (SHA256, b"\x01" * 32), sessions=[pw_session(attrs=0x20)]),
        extend(0, (SHA256, b"\x01" * 32), sessions=[pw_session(), pw_session()]),
        extend(0, (SHA256, b"\x01" * 32), sessions=[b"\x40\x00\x00\x09\x00"]),   # short session
        extend(0, (SHA256, b"\x01" * 32), sessions=[b"\x02\x00\x00\x00" + b"\0\0\x01\0\0"]),
        extend(0, (SHA256, b"\x01" * 32), sessions=[b"\x12\x00\x00\x00" + b"\0\0\x01\0\0"]),
        extend(0, *[(SHA256, b"\x01" * 32)] * 5),            # count > HASH_COUNT
        extend(0, (SHA256, b"\x01" * 32)) + b"\0",            # trailing byte (size mismatch)
        extend(0, (SHA256, b"\x01" * 32))[:-1],               # truncated
    ] + [read((SHA256, [0]))],
    "startup-shutdown-cycles": [
        STARTUP_CLEAR, extend(0, (SHA256, b"\x01" * 32)), extend(16, (SHA256, b"\x02" * 32)),
        SHUTDOWN_STATE, read((SHA256, [0, 16])), cmd(0x145, u16(2)),
    ],
    "header-errors": [
        b"", b"\x80", b"\x80\x01", b"\x80\x01\x00\x00\x00\x0c", b"\x00\xc1\x00\x00\x00\x0a\x00\x00\x00\x99",
        b"\x80\x03\x00\x00\x00\x0c\x00\x00\x01\x44\x00\x00",
        b"\x80\x01\x00\x00\x00\x0d\x00\x00\x01\x44\x00\x00",
        b"\x80\x01\x00\x00\x00\x0b\x00\x00\x01\x44\x00\x00",
        b"\x80\x01\x00\x00\x00\x0a\x00\x00\x01\x44",
        b"\x80\x01\x00\x00\x00\x0a\x00\x00\x01\x44\x00",
        cmd(0x1FFF), cmd(0x20000001),
        STARTUP_CLEAR + b"\0",
        cmd(0x144, u16(7)),
        cmd(0x144, u16(0), sessions=PW),
        STARTUP_CLEAR,
        cmd(0x1FFF), cmd(0x144), cmd(0x17B), cmd(0x17B, u16(8) + b"\0"),
    ],
    "sessions-area-errors": [
        STARTUP_CLEAR,
        cmd(0x17B, u16(8), sessions=[]),
        cmd(0x17B, u16(8), tag=0x8002) ,
        cmd(0x17B, u32(3) + b"\0\0\0" + u16(8), tag=0x8002),
        cmd(0x17B, u32(100) + u16(8), tag=0x8002),
        cmd(0x17B, u16(8), sessions=PW),
        cmd(0x17B, u16(8), sessions=[pw_session()] * 4),
        extend(0, (SHA256, b"\x01" * 32), sessions=[pw_session()] * 4),
    ],
    "random-and-stir": [STARTUP_CLEAR, cmd(0x17B, u16(0)), cmd(0x17B, u16(64)),
                        cmd(0x17B, u16(100)), cmd(0x146, b2(b"entropy")),
                        cmd(0x146, b2(b"x" * 128)), cmd(0x146, b2(b"x" * 129)),
                        cmd(0x17B, u16(16))],
    "hash": [STARTUP_CLEAR, hash_(b"abc", SHA1), hash_(b"abc", SHA256), hash_(b"abc", SHA384),
             hash_(b"abc", SHA512), hash_(b"", SHA256), hash_(b"x" * 1024),
             hash_(b"x" * 1025), hash_(b"abc", 0x0027), hash_(b"abc", 0x0010),
             hash_(b"abc", SHA256, 0x40000002), hash_(b"\xffTCGabc", SHA256, RH_OWNER)],
    "selftest": [STARTUP_CLEAR, cmd(0x143, b"\x01"), cmd(0x143, b"\x00"), cmd(0x143, b"\x02"),
                 cmd(0x17C), cmd(0x142, u32(0)), cmd(0x142, u32(1) + u16(SHA256)),
                 cmd(0x142, u32(65) + u16(SHA256) * 65)],
    "readclock": [STARTUP_CLEAR, cmd(0x181), cmd(0x181, b"\0")],
    "getcap": [STARTUP_CLEAR,
               getcap(5, 0, 1), getcap(5, 1, 1),                  # PCRS, bad property
               getcap(1, 0x40000000, 20), getcap(1, 0, 30), getcap(1, 0, 3),
               getcap(1, 0x80000000, 10), getcap(1, 0x81000000, 10), getcap(1, 0x01000000, 10),
               getcap(1, 0x02000000, 10), getcap(1, 0x03000000, 10), getcap(1, 0x05000000, 10),
               getcap(7, 0, 100), getcap(7, 0x11, 2), getcap(7, 0x0B, 2),   # PCR_PROPERTIES
               getcap(8, 0, 100), getcap(8, 4, 1),                          # ECC_CURVES
               getcap(11, 0, 1), getcap(0xFFFF, 0, 1), getcap(3, 0, 100), getcap(4, 0, 100),
               getcap(6, 0x100, 0), getcap(1, 0x40000000, 0)],
    "testparms": [STARTUP_CLEAR] + [cmd(0x18A, bytes.fromhex(h)) for h in (
        "00010006008000430010080000010001",   # RSA 2048, AES-128-CFB
        "00010006008000430010080000000000",   # exponent 0 (default)
        "0001001000100800 00000000",          # RSA, no symmetric
        "0001001000100400 00000000",          # RSA 1024
        "0001001000100C00 00000000",          # RSA 3072
        "0001001000100300 00000000",          # RSA 768: TPM_RC_VALUE
        "000100060080004300140100b0800 00000000".replace("b", ""),  # RSASSA? malformed
        "0001000600800043001400 0b0800 00000000",   # RSASSA-SHA256
        "0001000600800043001700 0b0800 00000000",   # OAEP-SHA256
        "0001000600800043001500 0800 00000000",     # RSAES
        "0001000600800043001800 0b0800 00000000",   # ECDSA on RSA: TPM_RC_VALUE
        "0001000600c00043001000 0800 00000000",     # AES-192
        "0001000601000043001000 0800 00000000",     # AES-256
        "0001000600400043001000 0800 00000000",     # AES-64: TPM_RC_VALUE
        "0001000600800099001000 0800 00000000",     # bad mode
        "0001000700800043001000 0800 00000000",     # bad symmetric
        "0023001000100003 0010",                    # ECC P-256, no scheme, no kdf
        "0023001000100004 0010",                    # P-384
        "0023001000100005 0010",                    # P-521
        "0023001000180b 0003 0010",                 # ECDSA-SHA256 P-256
        "0023001000190b 0003 0010",                 # ECDH-SHA256 P-256
        "00230010001c0b 0003 0010",                 # ECSCHNORR
        "0023001000100099 0010",                    # unknown curve
        "0023001000100003 00200b",                  # KDF MGF1-SHA256... (0x0007 is MGF1)
        "0023001000100003 00070b",                  # MGF1 kdf with sha256
        "0008 0010",                                # KEYEDHASH, no scheme
        "0008 0005 000b",                           # HMAC-SHA256
        "0008 000a 000b 0022",                      # XOR sha256 kdf1_sp800_108
        "0008 0014 000b",                           # RSASSA as keyedhash scheme: VALUE
        "0025 0006 0080 0043",                      # SYMCIPHER AES-128-CFB
        "0025 0006 0100 0043",                      # SYMCIPHER AES-256-CFB
        "0025 0010",                                # SYMCIPHER NULL: SYMMETRIC
        "0025 0006 0080 0010",                      # SYMCIPHER AES mode NULL
        "0099 0010",                                # bad type
        "0001",                                     # truncated
        "0001000600800043001000080000000000",       # trailing byte
    )],
}


def _normalize(c, r):
    code = int.from_bytes(c[6:10], "big") if len(c) >= 10 else None
    if code in SHAPE_ONLY and rc(r) == 0:
        return (r[:10], len(r))
    if code == 0x17D and rc(r) == 0:           # Hash: the digest matches, the ticket HMAC not
        n = int.from_bytes(r[10:12], "big")
        return (r[:12 + n + 6], len(r) - (12 + n + 6 + 2))
    if code == 0x17A and rc(r) == 0 and int.from_bytes(c[10:14], "big") in (0, 2, 3, 4, 6, 8):
        # ALGS, COMMANDS, PP/AUDIT_COMMANDS, TPM_PROPERTIES, ECC_CURVES: what each TPM
        # implements (ctpm's answers are checked against its own tables in test_capability)
        return (r[6:10],)
    if rc(r) in KNOWN_DEVIATIONS:
        return KNOWN_DEVIATIONS[rc(r)]
    return r


def _run_both(stream):
    ctpm = Tpm.manufacture(seed=b"differential")
    sw = Swtpm()
    try:
        for i, c in enumerate(stream):
            c = bytes.fromhex(c.replace(" ", "")) if isinstance(c, str) else c
            if isinstance(c, tuple):
                c, loc = c
            else:
                loc = 0
            a = ctpm.execute(c, loc)
            b = sw.execute(c, loc) if len(c) >= 10 else None
            yield i, c, a, b
    finally:
        sw.close()


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_same_responses_as_swtpm(name):
    mismatches = []
    for i, c, ours, theirs in _run_both(STREAMS[name]):
        if theirs is None:
            continue   # swtpm cannot frame fewer than 10 bytes; covered in test_engine
        if _normalize(c, ours) != _normalize(c, theirs):
            mismatches.append(f"#{i} cmd={c.hex()}\n  ctpm ={ours.hex()}\n  swtpm={theirs.hex()}")
    assert not mismatches, "\n".join(mismatches)


LOCALITY_STREAM = [STARTUP_CLEAR] + [
    (c, loc) for loc in (0, 1, 2, 3, 4) for c in (
        reset(16), reset(17), reset(20), reset(21), reset(23),
        extend(17, (SHA256, b"\x01" * 32)), extend(20, (SHA256, b"\x01" * 32)),
        extend(21, (SHA256, b"\x01" * 32)), extend(0, (SHA256, b"\x01" * 32)),
        read((SHA256, [16, 17, 18, 19, 20, 21, 22, 23])),
    )
]


def test_locality_rules_match_swtpm():
    mismatches = []
    for i, c, ours, theirs in _run_both(LOCALITY_STREAM):
        if _normalize(c, ours) != _normalize(c, theirs):
            mismatches.append(f"#{i} cmd={c.hex()}\n  ctpm ={ours.hex()}\n  swtpm={theirs.hex()}")
    assert not mismatches, "\n".join(mismatches)
