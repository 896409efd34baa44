"""PCR_Allocate of partial banks (a bank holding only some PCRs): the same command stream to
ctpm and swtpm (libtpms), across _TPM_Init and across process restarts; tpm2-tools."""
import hashlib
import re
import shutil
import subprocess

import pytest
from construct import Container

from ctpm.engine.commands import pcr
from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state.store import DirStore
from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm
from tests.test_objects import template
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd,
                          pcr_select, pw_session, rc, u16, u32)

SHA1, SHA256, SHA384, SHA512 = 0x04, 0x0B, 0x0C, 0x0D
SIZES = {SHA1: 20, SHA256: 32, SHA384: 48, SHA512: 64}
RH_PLATFORM = 0x4000000C
ALL = list(range(24))
POLICY_SESSION = 0x03000000
CYCLE = "cycle"
RC_ONLY = "rc-only"
PARTIAL = ((SHA1, ALL), (SHA256, list(range(8)) + [16, 17, 23]), (SHA384, []),
           (SHA512, [0, 10, 17]))


def allocate(*banks):
    return cmd(0x12B, pcr_select(*banks), handles=[RH_PLATFORM], sessions=[pw_session()])


def read(*banks):
    return cmd(0x17E, pcr_select(*banks))


def extend(pcr, *algs, data=b"m"):
    digests = b"".join(u16(a) + hashlib.new({SHA1: "sha1", SHA256: "sha256", SHA384: "sha384",
                                             SHA512: "sha512"}[a], data).digest()
                       for a in algs)
    return cmd(0x182, u32(len(algs)) + digests, handles=[pcr], sessions=[pw_session()])


def event(pcr, data):
    return cmd(0x13C, b2(data), handles=[pcr], sessions=[pw_session()])


def reset(pcr):
    return cmd(0x13D, handles=[pcr], sessions=[pw_session()])


GETCAP_PCRS = cmd(0x17A, u32(5) + u32(0) + u32(1))
START_POLICY = cmd(0x176, u32(0x40000007) + u32(0x40000007) + b2(b"\x11" * 16) + b2(b"")
                   + bytes([1]) + u16(0x10) + u16(SHA256))


def policy_pcr(*banks):
    return cmd(0x17F, b2(b"") + pcr_select(*banks), handles=[POLICY_SESSION])


POLICY_GET_DIGEST = cmd(0x189, handles=[POLICY_SESSION])
FLUSH_POLICY = cmd(0x165, u32(POLICY_SESSION))
CREATION = "creation-data"      # compare only the creationData of a CreatePrimary


def create_primary(*banks):
    """CreatePrimary of an HMAC key with creationPCR (its public area differs, the
    primaries being derived differently)."""
    body = (b2(b2(b"") + b2(b"")) + template("hmac") + b2(b"")
            + (pcr_select(*banks) if banks else u32(0)))
    return cmd(0x131, body, handles=[0x40000001], sessions=[pw_session()])


def creation_data(rsp):
    if rc(rsp):
        return rc(rsp)
    body = rsp[18:]
    n = int.from_bytes(body[:2], "big")
    m = int.from_bytes(body[2 + n:4 + n], "big")
    return body[4 + n:4 + n + m].hex()

STREAM = [
    STARTUP_CLEAR,
    allocate(*PARTIAL),
    allocate((SHA256, [1, 2]), (SHA1, [])),                 # no PCR 0 / 17 left: TPM_RC_PCR
    allocate(*PARTIAL),
    GETCAP_PCRS,                                            # not before the next TPM Reset
    SHUTDOWN_CLEAR, CYCLE, STARTUP_CLEAR,
    GETCAP_PCRS,
    read((SHA256, ALL[:8])), read((SHA256, ALL[8:])), read((SHA512, ALL[:16])),
    read((SHA1, [8]), (SHA256, [8]), (SHA384, [8]), (SHA512, [8])),
    read((SHA256, ALL), (SHA512, ALL)),                     # 8 values at most
    read((SHA512, ALL), (SHA256, ALL)),
    # Extend and Event skip the banks a PCR is not allocated in
    extend(8, SHA1, SHA256, SHA512), read((SHA1, [8]), (SHA256, [8]), (SHA512, [8])),
    extend(10, SHA256, SHA512), read((SHA256, [10]), (SHA512, [10])),
    event(10, b"event"), read((SHA1, [10]), (SHA256, [10]), (SHA512, [10])),
    extend(23, SHA256, SHA1), read((SHA256, [23]), (SHA1, [23])),
    extend(16, SHA256, SHA1), reset(16), reset(20),
    read((SHA256, [16, 20]), (SHA1, [16, 20])),
    # PolicyPCR takes the allocated PCRs only (FilterPcr)
    (RC_ONLY, START_POLICY),
    policy_pcr((SHA256, [0, 8, 10]), (SHA512, [0, 1, 10])),
    POLICY_GET_DIGEST, FLUSH_POLICY,
    # creation data: the selection without what is not allocated, and its digest
    (CREATION, create_primary((SHA256, [0, 1, 8, 17]), (SHA384, [0]), (SHA512, [10]))),
    (CREATION, create_primary()),
    # Resume restores the saved PCRs of the partial banks
    SHUTDOWN_STATE, CYCLE, STARTUP_STATE,
    read((SHA256, [0, 1, 2, 3, 4, 5, 6, 7])), read((SHA1, [8, 10, 23]), (SHA512, [10, 17])),
    GETCAP_PCRS,
    # and back to whole banks
    allocate((SHA1, []), (SHA256, ALL), (SHA512, [])),
    SHUTDOWN_CLEAR, CYCLE, STARTUP_CLEAR,
    GETCAP_PCRS, read((SHA256, [8, 9, 10])), read((SHA1, [0]), (SHA512, [0])),
]


def _run(execute, cycle):
    out = []
    for c in STREAM:
        if c == CYCLE:
            cycle()
            continue
        kind, c = c if isinstance(c, tuple) else (None, c)
        r = execute(c)
        out.append(rc(r) if kind == RC_ONLY else creation_data(r) if kind == CREATION
                   else r.hex())
    return out


@needs_swtpm
@pytest.mark.swtpm
@pytest.mark.parametrize("restart", ["tpm-init", "process"])
def test_partial_banks_as_swtpm(tmp_path, restart):
    store = DirStore(str(tmp_path / "ctpm"))
    ours = [Tpm.manufacture(Platform(store), seed=b"pcr-partial")]
    sw = Swtpm()
    if restart == "process":                # state only from what is on disk
        def our_cycle():
            ours[0] = Tpm.manufacture(Platform(DirStore(store.path)))
        sw_cycle = sw.restart
    else:
        def our_cycle():
            ours[0].power_off()
            ours[0].power_on()

        def sw_cycle():
            assert sw.ctrl(2, u32(0)) == u32(0)
    try:
        a = _run(lambda c: ours[0].execute(c), our_cycle)
        b = _run(sw.execute, sw_cycle)
    finally:
        sw.close()
    assert [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y] == []
    # GetCapability(PCRS) after the TPM Reset: SHA-256 0-7, 16, 17, 23; SHA-512 0, 10, 17
    assert "000b03ff0083" in a[7] and "000d03010402" in a[7] and "000c03000000" in a[7]
    # PCR 8 of SHA-256 and SHA-512 is not there: deselected, and only SHA-1's is extended
    assert "000403000100000b03000000000d03000000" in a[15]
    assert a[15].endswith(hashlib.sha1(bytes(20) + hashlib.sha1(b"m").digest()).hexdigest())


def test_partial_bank_engine_details():
    """D-RTM and PCR_Reset touch only allocated PCRs; the allocation is in the NV image."""
    tpm = Tpm.manufacture(seed=b"pcr-partial")
    x = tpm.execute
    assert rc(x(STARTUP_CLEAR)) == 0
    assert rc(x(allocate((SHA256, [0, 17, 18]), (SHA1, []), (SHA384, []), (SHA512, [])))) == 0
    assert rc(x(SHUTDOWN_CLEAR)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(x(STARTUP_CLEAR)) == 0
    assert tpm.state.nv["pcr_allocated"] == [[SHA256, 0x060001]]
    bank = tpm.state.pcrs[SHA256]
    assert [i for i, v in enumerate(bank) if v is not None] == [0, 17, 18]
    tpm.hash_start()
    tpm.hash_data(b"dynamic launch")
    tpm.hash_end()
    assert bank[17] == hashlib.sha256(bytes(32) + hashlib.sha256(b"dynamic launch").digest()
                                      ).digest()
    assert bank[18] == bytes(32) and bank[19] is None
    assert rc(x(reset(16))) == 0 and bank[16] is None
    # FilterPcr for Quote: PCR 1 and 16 are not in the bank
    selection, values = pcr.filter_selection(
        tpm.state, [Container(hash=SHA256, pcrSelect=b"\x03\x00\x07")])
    assert bytes(selection[0].pcrSelect) == b"\x01\x00\x06"
    assert values == [bank[0], bank[17], bank[18]]
    assert rc(x(SHUTDOWN_STATE)) == 0
    assert tpm.state.nv["saved"]["pcrs"][str(SHA256)][:2] == [bytes(32).hex(), None]


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_pcrallocate") is None, reason="tpm2-tools missing")
def test_tools_pcrallocate_partial(tmp_path):
    def ok(*args):
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout
    state = str(tmp_path / "state")
    with run_daemon("--mssim", "127.0.0.1:0", "--state", state) as d:
        t = d.tcti()
        ok("tpm2_startup", "-c", "-T", t)
        ok("tpm2_pcrallocate", "-T", t, "sha256:0,1,2,17+sha1:all+sha384:none+sha512:none")
        ok("tpm2_shutdown", "-c", "-T", t)
    with run_daemon("--mssim", "127.0.0.1:0", "--state", state) as d:
        t = d.tcti()
        ok("tpm2_startup", "-c", "-T", t)
        pcrs = ok("tpm2_getcap", "-T", t, "pcrs")
        assert re.search(r"sha256: \[ 0, 1, 2, 17 \]", pcrs), pcrs
        assert "sha1: [ 0, 1, 2, 3," in pcrs and "sha384: [ ]" in pcrs
        out = ok("tpm2_pcrread", "-T", t, "sha256:0,1,3,17+sha1:3")
        assert re.search(r"sha256:\s+0 : 0x0+\s+1 : 0x0+\s+17\s*: 0xF+\s+sha1:", out), out
        assert " 3 : " not in out.split("sha1:")[0]
