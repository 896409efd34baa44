"""tpm2-tools against a real `ctpm run` process, over both TCTIs.

Every test drives the real tpm2-tools 5.x binaries. Expected values are computed
independently (hashlib, the TCG specifications), never read back from ctpm.

The module-scoped `daemon` is shared: tests that change PCRs use their own PCR indices and
compute what they expect from the value read just before, so their order does not matter.
Tests about the TPM life cycle (Startup, Shutdown, power) get a fresh daemon of their own.
"""
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest

from ctpm.engine.config import EngineConfig
from ctpm.testing.process import run_daemon
from ctpm.wire.commands import COMMANDS as CTPM_COMMANDS

pytestmark = [pytest.mark.tools,
              pytest.mark.skipif(shutil.which("tpm2_getrandom") is None,
                                 reason="tpm2-tools is not installed")]

BANKS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256,
         "sha384": hashlib.sha384, "sha512": hashlib.sha512}
DIGEST_SIZE = {name: h().digest_size for name, h in BANKS.items()}
# PC Client PCR initial values after Startup at locality 0: 17-22 are all ones.
ONES_PCRS = range(17, 23)

# What ctpm implements (its command table); that the TPMA_CC bits are right is checked
# independently against swtpm in test_tools_differential.py.
COMMANDS = {f"TPM2_CC_{c.code.name}": int(c.code) for c in CTPM_COMMANDS}
HANDLE_COUNTS = {f"TPM2_CC_{c.code.name}": len(c.handles) for c in CTPM_COMMANDS}
RESPONSE_HANDLE_COMMANDS = {f"TPM2_CC_{c.code.name}" for c in CTPM_COMMANDS
                            if c.response_handle}

CAPABILITIES = ["algorithms", "commands", "pcrs", "properties-fixed", "properties-variable",
                "ecc-curves", "handles-transient", "handles-persistent",
                "handles-permanent", "handles-pcr", "handles-nv-index",
                "handles-loaded-session", "handles-saved-session"]

TPM_RC_INITIALIZE = 0x100
TPM_RH = {"o": 0x40000001, "n": 0x40000007, "e": 0x4000000B, "p": 0x4000000C}
TPM_ST_HASHCHECK = 0x8024


def tool(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=30, **kwargs)


def ok(*args, **kwargs) -> str:
    """Run a tool that must succeed; its stdout."""
    result = tool(*args, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stderr}"
    return result.stdout


def fails(*args, **kwargs):
    """Run a tool that must fail; its CompletedProcess."""
    result = tool(*args, **kwargs)
    assert result.returncode != 0, f"{' '.join(args)} succeeded:\n{result.stdout}"
    return result


# -- parsing what the tools print -------------------------------------------------------------

def yaml_blocks(text: str) -> dict:
    """The tools' simple YAML: `key: value`, or `key:` followed by indented `sub: value`."""
    out, block = {}, None
    for line in text.splitlines():
        if not line.strip():
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip().strip('"')
        if not line.startswith(" "):
            if value:
                out[key], block = value, None
            else:
                out[key] = block = {}
        else:
            assert block is not None, f"indented line without a block: {line!r}"
            block[key.strip()] = value
    return out


def readclock(tcti) -> dict:
    blocks = yaml_blocks(ok("tpm2_readclock", "-T", tcti))
    info = blocks["clock_info"]
    assert info["safe"] in ("yes", "no")
    return {"time": int(blocks["time"]), "clock": int(info["clock"]),
            "reset_count": int(info["reset_count"]),
            "restart_count": int(info["restart_count"]), "safe": info["safe"] == "yes"}


def parse_pcrread(text: str) -> dict:
    """`tpm2_pcrread` stdout -> {bank: {index: bytes}}."""
    banks, bank = {}, None
    for line in text.splitlines():
        m = re.fullmatch(r"  (\w+):", line)
        if m:
            bank = banks.setdefault(m.group(1), {})
            continue
        m = re.fullmatch(r"    (\d+)\s*: 0x([0-9A-F]+)", line)
        assert m and bank is not None, f"unexpected pcrread line {line!r}"
        bank[int(m.group(1))] = bytes.fromhex(m.group(2))
    return banks


def pcr(tcti, bank: str, index: int) -> bytes:
    return parse_pcrread(ok("tpm2_pcrread", "-T", tcti, f"{bank}:{index}"))[bank][index]


def extended(old: bytes, bank: str, digest: bytes) -> bytes:
    return BANKS[bank](old + digest).digest()


def fixed_digest(bank: str, label: str) -> bytes:
    return BANKS[bank](label.encode()).digest()


def orderly(tcti) -> int:
    return int(yaml_blocks(ok("tpm2_getcap", "-T", tcti, "properties-variable"))
               ["TPM2_PT_STARTUP_CLEAR"]["orderly"])


def tcti_response_codes(stderr: str) -> list:
    """Response codes of every TPM response in a TSS2_LOG=tcti+debug trace (mssim or swtpm
    TCTI): the header is the first line of the hex dump that follows 'Response ...received'."""
    dumps = re.findall(r"Response (?:buffer )?received: \(size=\d+\):\s*\n0000: ([0-9a-f]{20})",
                       stderr)
    return [int(d[12:20], 16) for d in dumps]


# -- power: the platform signals a real machine would give ------------------------------------

def power_cycle(daemon, kind):
    """Power off and on (mssim platform port) or re-initialize (swtpm CMD_INIT): _TPM_Init."""
    _, host, port, _ = daemon.endpoint(kind)
    with socket.create_connection((host, port + 1), timeout=5) as s:
        if kind == "mssim":
            for signal in (2, 1, 11, 20):       # POWER_OFF, POWER_ON, NV_ON, SESSION_END
                s.sendall(struct.pack(">I", signal))
                if signal != 20:
                    assert s.recv(4) == b"\0\0\0\0"
        else:
            s.sendall(struct.pack(">II", 2, 0))  # CMD_INIT, no flags
            assert s.recv(4) == b"\0\0\0\0"


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    sock = tmp_path_factory.mktemp("ctpm") / "swtpm.sock"
    with run_daemon("--mssim", "127.0.0.1:0", "--swtpm", "127.0.0.1:0",
                    "--swtpm", f"unix:{sock}") as d:
        result = tool("tpm2_startup", "-c", "-T", d.tcti("mssim"))
        assert result.returncode == 0, result.stderr
        yield d


@pytest.fixture(params=["mssim", "swtpm"])
def via(request, daemon):
    """The shared daemon's TCTI string, once per transport."""
    return daemon.tcti(request.param)


@pytest.fixture
def fresh():
    """A new TPM (in memory), powered, never started."""
    with run_daemon() as d:
        yield d


# -- transports -------------------------------------------------------------------------------

@pytest.mark.parametrize("tcti", ["mssim", "swtpm", "swtpm-unix"])
def test_getrandom(daemon, tcti):
    if tcti == "swtpm-unix":
        tcti = f"swtpm:path={daemon.endpoints[2][3]}"
    else:
        tcti = daemon.tcti(tcti)
    result = tool("tpm2_getrandom", "-T", tcti, "--hex", "16")
    assert result.returncode == 0, result.stderr
    assert len(bytes.fromhex(result.stdout.strip())) == 16


def test_pcr_extend_seen_over_the_other_tcti(daemon):
    digest = "11" * 32
    result = tool("tpm2_pcrextend", "-T", daemon.tcti("swtpm"), f"16:sha256={digest}")
    assert result.returncode == 0, result.stderr
    result = tool("tpm2_pcrread", "-T", daemon.tcti("mssim"), "sha256:16")
    assert result.returncode == 0, result.stderr
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(digest)).hexdigest().upper()
    assert expected in result.stdout.upper()


# -- tpm2_startup / tpm2_shutdown -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
def test_startup_clear_on_a_new_tpm(fresh, kind):
    tcti = fresh.tcti(kind)
    # Before TPM2_Startup every command but Startup is refused with TPM_RC_INITIALIZE.
    for args in (["tpm2_gettestresult"], ["tpm2_readclock"], ["tpm2_pcrread", "sha256:0"]):
        result = fails(*args, "-T", tcti)
        assert "(0x100)" in result.stderr and "not initialized" in result.stderr, result.stderr
    assert ok("tpm2_startup", "-c", "-T", tcti) == ""
    clock = readclock(tcti)
    assert (clock["reset_count"], clock["restart_count"]) == (1, 0)
    assert ok("tpm2_gettestresult", "-T", tcti).split() == ["status:", "success"]
    banks = parse_pcrread(ok("tpm2_pcrread", "-T", tcti))
    for bank, size in DIGEST_SIZE.items():
        for i in range(24):
            assert banks[bank][i] == (b"\xff" if i in ONES_PCRS else b"\0") * size, (bank, i)
    # A TPM fresh from the factory counts as shut down in order (as swtpm does).
    assert orderly(tcti) == 1 and clock["safe"] == 1


@pytest.mark.parametrize("args", [("-c",), ()], ids=["clear", "state"])
def test_second_startup_is_refused_and_changes_nothing(daemon, via, args):
    digest = fixed_digest("sha256", "second startup")
    ok("tpm2_pcrextend", "-T", via, f"9:sha256={digest.hex()}")
    before_pcr, before_clock = pcr(via, "sha256", 9), readclock(via)

    result = tool("tpm2_startup", *args, "-T", via,
                  env={**os.environ, "TSS2_LOG": "tcti+debug"})
    # tpm2_startup treats TPM_RC_INITIALIZE (already started) as success ...
    assert result.returncode == 0, result.stderr
    # ... and that is what the TPM answered:
    assert tcti_response_codes(result.stderr)[-1] == TPM_RC_INITIALIZE
    # and nothing was reset.
    assert pcr(via, "sha256", 9) == before_pcr
    after_clock = readclock(via)
    assert after_clock["reset_count"] == before_clock["reset_count"]
    assert after_clock["restart_count"] == before_clock["restart_count"]


@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
def test_shutdown_state_then_resume(fresh, kind):
    tcti = fresh.tcti(kind)
    ok("tpm2_startup", "-c", "-T", tcti)
    a, b = fixed_digest("sha256", "saved"), fixed_digest("sha256", "not saved")
    ok("tpm2_pcrextend", "-T", tcti, f"0:sha256={a.hex()}", f"16:sha256={b.hex()}")
    before = readclock(tcti)

    assert ok("tpm2_shutdown", "-T", tcti) == ""            # TPM_SU_STATE is the default
    power_cycle(fresh, kind)
    assert ok("tpm2_startup", "-T", tcti) == ""             # TPM Resume

    after = readclock(tcti)
    assert after["reset_count"] == before["reset_count"]
    assert after["restart_count"] == before["restart_count"] + 1
    assert after["clock"] >= before["clock"]
    assert after["safe"]                                    # orderly: no clock value was lost
    assert orderly(tcti) == 1
    # PCRs 0-15 are saved by Shutdown(STATE); 16 is not; 17-22 start all ones again.
    assert pcr(tcti, "sha256", 0) == extended(bytes(32), "sha256", a)
    assert pcr(tcti, "sha256", 16) == bytes(32)
    assert pcr(tcti, "sha256", 17) == b"\xff" * 32


@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
def test_shutdown_clear_forbids_resume(fresh, kind):
    tcti = fresh.tcti(kind)
    ok("tpm2_startup", "-c", "-T", tcti)
    a = fixed_digest("sha256", "gone")
    ok("tpm2_pcrextend", "-T", tcti, f"0:sha256={a.hex()}")
    before = readclock(tcti)

    assert ok("tpm2_shutdown", "-c", "-T", tcti) == ""
    power_cycle(fresh, kind)
    # Startup(STATE) after Shutdown(CLEAR): TPM_RC_VALUE on parameter 1.
    result = fails("tpm2_startup", "-T", tcti)
    assert "Esys_Startup(0x1C4)" in result.stderr, result.stderr
    assert ok("tpm2_startup", "-c", "-T", tcti) == ""       # TPM Reset

    after = readclock(tcti)
    assert after["reset_count"] == before["reset_count"] + 1
    assert after["restart_count"] == 0
    assert orderly(tcti) == 1
    assert pcr(tcti, "sha256", 0) == bytes(32)


# -- self tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [(), ("--fulltest",)], ids=["selftest", "fulltest"])
def test_selftest(via, args):
    assert ok("tpm2_selftest", *args, "-T", via) == ""
    assert ok("tpm2_gettestresult", "-T", via).split() == ["status:", "success"]


@pytest.mark.parametrize("algs", [["sha256"], ["rsa", "ecc", "aes", "hmac"],
                                  ["sm3_256", "sm4", "ecmqv"], []],
                         ids=["sha256", "several", "sm", "none"])
def test_incrementalselftest(via, algs):
    # ctpm tests everything before it answers: nothing remains (empty toDoList).
    assert ok("tpm2_incrementalselftest", *algs, "-T", via).split() == ["status:", "complete"]


# Part 3 §10.3: an algorithm the TPM does not implement is TPM_RC_VALUE (0x1C4), as swtpm.
@pytest.mark.parametrize("alg", ["cmac", "camellia"])
def test_incrementalselftest_of_an_unimplemented_algorithm(daemon, alg):
    listed = yaml_blocks(ok("tpm2_getcap", "-T", daemon.tcti(), "algorithms"))
    assert alg not in listed
    result = fails("tpm2_incrementalselftest", alg, "-T", daemon.tcti())
    assert "Esys_IncrementalSelfTest(0x1C4)" in result.stderr, result.stderr


# -- random numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 32, 64])
def test_getrandom_sizes(via, size):
    outputs = {ok("tpm2_getrandom", "-T", via, "--hex", str(size)) for _ in range(2)}
    for out in outputs:
        assert re.fullmatch(r"[0-9a-f]+", out)
        assert len(bytes.fromhex(out)) == size
    if size >= 32:
        assert len(outputs) == 2          # 2^-256 chance of a false failure


def test_getrandom_to_a_file(via, tmp_path):
    files = [tmp_path / "r1", tmp_path / "r2"]
    for f in files:
        assert ok("tpm2_getrandom", "-T", via, "-o", str(f), "32") == ""
    data = [f.read_bytes() for f in files]
    assert [len(d) for d in data] == [32, 32]
    assert data[0] != data[1]


def test_getrandom_is_bounded_by_the_largest_digest(via):
    # tpm2_getrandom reads TPM2_PT_MAX_DIGEST from the TPM and refuses more ...
    result = fails("tpm2_getrandom", "-T", via, "--hex", "65")
    assert "max hash size, which is: 64" in result.stderr
    # ... and when forced, the TPM returns at most that many bytes (Part 3 §16.1).
    assert len(bytes.fromhex(ok("tpm2_getrandom", "-T", via, "--hex", "-f", "128"))) == 64


def test_stirrandom(via, tmp_path):
    assert ok("tpm2_stirrandom", "-T", via, input="some entropy from stdin") == ""
    f = tmp_path / "entropy"
    f.write_bytes(bytes(range(128)))                       # the largest TPM2B_SENSITIVE_DATA
    assert ok("tpm2_stirrandom", "-T", via, str(f)) == ""
    # From a file the tool checks the size itself; from stdin the TPM has to.
    result = fails("tpm2_stirrandom", "-T", via, input="x" * 129)
    assert "Esys_StirRandom(0x1D5)" in result.stderr       # TPM_RC_SIZE, parameter 1
    assert len(bytes.fromhex(ok("tpm2_getrandom", "-T", via, "--hex", "16"))) == 16


# -- PCRs -------------------------------------------------------------------------------------

def test_pcrextend_several_banks_and_pcrs_in_one_call(via):
    digests = {bank: fixed_digest(bank, f"extend {bank}") for bank in BANKS}
    before = {bank: pcr(via, bank, 10) for bank in BANKS}
    before11 = {bank: pcr(via, bank, 11) for bank in ("sha1", "sha256")}
    spec10 = "10:" + ",".join(f"{bank}={d.hex()}" for bank, d in digests.items())
    extra = fixed_digest("sha256", "pcr 11")
    assert ok("tpm2_pcrextend", "-T", via, spec10, f"11:sha256={extra.hex()}") == ""
    for bank in BANKS:
        assert pcr(via, bank, 10) == extended(before[bank], bank, digests[bank]), bank
    assert pcr(via, "sha256", 11) == extended(before11["sha256"], "sha256", extra)
    assert pcr(via, "sha1", 11) == before11["sha1"]             # not named: untouched


@pytest.mark.parametrize("index", [17, 20])
def test_pcrextend_needs_the_right_locality(via, index):
    digest = fixed_digest("sha256", "locality")
    result = fails("tpm2_pcrextend", "-T", via, f"{index}:sha256={digest.hex()}")
    assert f"Could not extend pcr index: {index:#x}" in result.stderr, result.stderr
    assert "Esys_PCR_Extend(0x907)" in result.stderr                 # TPM_RC_LOCALITY
    assert pcr(via, "sha256", index) == b"\xff" * 32


def test_pcrread_everything_against_a_model(fresh, tmp_path):
    """Fresh TPM, known extends in several PCRs and banks, then every PCR of every bank
    (stdout and the -o binary file) compared with values computed with hashlib."""
    tcti = fresh.tcti("mssim")
    ok("tpm2_startup", "-c", "-T", tcti)
    model = {bank: [(b"\xff" if i in ONES_PCRS else b"\0") * size for i in range(24)]
             for bank, size in DIGEST_SIZE.items()}
    plan = [(0, ["sha1", "sha256", "sha384", "sha512"]), (7, ["sha256"]), (8, ["sha1"]),
            (15, ["sha384", "sha512"]), (16, ["sha256", "sha512"]), (23, ["sha1", "sha384"]),
            (0, ["sha256"])]
    for n, (index, banks) in enumerate(plan):
        digests = {bank: fixed_digest(bank, f"event {n}") for bank in banks}
        ok("tpm2_pcrextend", "-T", fresh.tcti("swtpm"),
           f"{index}:" + ",".join(f"{b}={d.hex()}" for b, d in digests.items()))
        for bank, d in digests.items():
            model[bank][index] = extended(model[bank][index], bank, d)

    shown = parse_pcrread(ok("tpm2_pcrread", "-T", tcti))          # all allocated banks
    assert list(shown) == list(BANKS)
    for bank in BANKS:
        assert [shown[bank][i] for i in range(24)] == model[bank], bank

    out = tmp_path / "pcrs.bin"
    selection = "+".join(f"{bank}:all" for bank in BANKS)
    ok("tpm2_pcrread", "-T", tcti, selection, "-o", str(out))
    assert out.read_bytes() == b"".join(b"".join(model[bank]) for bank in BANKS)


def test_pcrread_output_file_in_selection_order(via, tmp_path):
    out = tmp_path / "pcrs.bin"
    stdout = ok("tpm2_pcrread", "-T", via, "sha512:3+sha1:17,0", "-o", str(out))
    shown = parse_pcrread(stdout)
    assert list(shown) == ["sha512", "sha1"] and list(shown["sha1"]) == [0, 17]
    assert out.read_bytes() == shown["sha512"][3] + shown["sha1"][0] + shown["sha1"][17]
    assert shown["sha1"][17] == b"\xff" * 20 and len(shown["sha512"][3]) == 64


# tpm2-tools 5.4 tpm2_pcrevent authorizes the PCR with an unbound, unsalted HMAC session.
def test_pcrevent(via, tmp_path):
    data = b"ctpm pcrevent test data\n" * 10
    f = tmp_path / "event"
    f.write_bytes(data)
    before = {bank: pcr(via, bank, 12) for bank in BANKS}
    result = tool("tpm2_pcrevent", "-T", via, "12", str(f))
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(": ") for line in result.stdout.splitlines())
    assert printed == {bank: h(data).hexdigest() for bank, h in BANKS.items()}
    for bank, h in BANKS.items():
        assert pcr(via, bank, 12) == extended(before[bank], bank, h(data).digest()), bank


def test_pcrreset(via):
    for index in (16, 23):
        spec = f"{index}:" + ",".join(f"{b}={fixed_digest(b, 'reset me').hex()}" for b in BANKS)
        ok("tpm2_pcrextend", "-T", via, spec)
        assert pcr(via, "sha256", index) != bytes(32)
    assert ok("tpm2_pcrreset", "-T", via, "16", "23") == ""
    for bank, size in DIGEST_SIZE.items():
        for index in (16, 23):
            assert pcr(via, bank, index) == bytes(size), (bank, index)


@pytest.mark.parametrize("index", [0, 7, 17])
def test_pcrreset_of_a_pcr_not_resettable_at_locality_0(via, index):
    before = {bank: pcr(via, bank, index) for bank in BANKS}
    result = fails("tpm2_pcrreset", "-T", via, str(index))
    assert result.returncode == 1
    assert "Esys_PCR_Reset(0x907) - tpm:warn(2.0): bad locality" in result.stderr
    assert f"Could not reset PCR index: {index}" in result.stderr
    assert {bank: pcr(via, bank, index) for bank in BANKS} == before


# -- tpm2_getcap ------------------------------------------------------------------------------

def test_getcap_lists_the_capabilities(via):
    assert ok("tpm2_getcap", "-T", via, "-l").split() == \
        [word for cap in CAPABILITIES for word in ("-", cap)]


def check_algorithms(text):
    algs = yaml_blocks(text)
    for name in BANKS:
        assert algs[name]["hash"] == "1" and algs[name]["object"] == "0", name
    assert algs["rsa"]["asymmetric"] == algs["rsa"]["object"] == "1"
    assert algs["ecc"]["asymmetric"] == algs["ecc"]["object"] == "1"
    assert algs["aes"]["symmetric"] == "1"
    assert algs["hmac"]["hash"] == algs["hmac"]["signing"] == "1"
    for mode in ("cfb", "cbc", "ctr", "ofb", "ecb"):
        assert algs[mode]["symmetric"] == algs[mode]["encrypting"] == "1", mode
    assert algs["ecdaa"]["asymmetric"] == algs["ecdaa"]["signing"] == "1"
    assert algs["sm3_256"]["hash"] == algs["sm4"]["symmetric"] == "1"
    assert algs["sm2"]["signing"] == "1" and algs["sm2"]["method"] == "0"   # no key exchange
    assert algs["ecmqv"]["asymmetric"] == algs["ecmqv"]["method"] == "1"
    # Not implemented, so not claimed (TestParms refuses them too):
    for name in ("tdes", "camellia", "cmac"):
        assert name not in algs, name
    values = [int(a["value"], 16) for a in algs.values()]
    assert values == sorted(values) and len(set(values)) == len(values)


def check_commands(text):
    # tpm2-tools 5.4 prints a command it has no name for (CertifyX509) as its TPMA_CC value
    by_code = {code: name for name, code in COMMANDS.items()}
    cmds = {(by_code.get(int(k, 16) & 0xFFFF, k) if k.startswith("0x") else k): v
            for k, v in yaml_blocks(text).items()}
    assert set(cmds) == set(COMMANDS)
    indices = [int(c["commandIndex"], 16) for c in cmds.values()]
    assert indices == sorted(indices)                 # ascending, as GetCapability returns
    for name, c in cmds.items():
        assert int(c["commandIndex"], 16) == COMMANDS[name], name
        assert int(c["cHandles"], 16) == HANDLE_COUNTS.get(name, 0), name
        assert c["rHandle"] == str(int(name in RESPONSE_HANDLE_COMMANDS)), name
        assert c["V"] == "0", name


def check_pcrs(text):
    lines = text.splitlines()
    assert lines[0] == "selected-pcrs:"
    expected = "[ " + ", ".join(str(i) for i in range(24)) + " ]"
    assert lines[1:] == [f"  - {bank}: {expected}" for bank in BANKS]


def check_properties_fixed(text):
    p = yaml_blocks(text)
    assert p["TPM2_PT_FAMILY_INDICATOR"] == {"raw": "0x322E3000", "value": "2.0"}
    assert p["TPM2_PT_MANUFACTURER"]["value"] == "CTPM"
    vendor = "".join(p[f"TPM2_PT_VENDOR_STRING_{i}"]["value"] for i in range(1, 5))
    assert vendor == "ctpm-python-emu"
    assert int(p["TPM2_PT_PCR_COUNT"]["raw"], 16) == 24
    assert int(p["TPM2_PT_PCR_SELECT_MIN"]["raw"], 16) == 3
    assert int(p["TPM2_PT_MAX_DIGEST"]["raw"], 16) == 64
    assert int(p["TPM2_PT_INPUT_BUFFER"]["raw"], 16) == 1024
    assert int(p["TPM2_PT_TOTAL_COMMANDS"]["raw"], 16) == len(COMMANDS)
    assert int(p["TPM2_PT_LIBRARY_COMMANDS"]["raw"], 16) == len(COMMANDS)
    assert int(p["TPM2_PT_VENDOR_COMMANDS"]["raw"], 16) == 0
    assert int(p["TPM2_PT_MAX_COMMAND_SIZE"]["raw"], 16) == EngineConfig().max_command_size


def check_properties_variable(text):
    p = yaml_blocks(text)
    startup = p["TPM2_PT_STARTUP_CLEAR"]
    assert (startup["phEnable"], startup["shEnable"], startup["ehEnable"],
            startup["phEnableNV"]) == ("1", "1", "1", "1")
    permanent = p["TPM2_PT_PERMANENT"]
    assert permanent["ownerAuthSet"] == permanent["inLockout"] == "0"
    assert p["TPM2_PT_HR_LOADED"] == p["TPM2_PT_HR_ACTIVE"] == "0x0"
    assert p["TPM2_PT_HR_NV_INDEX"] == p["TPM2_PT_HR_PERSISTENT"] == "0x0"
    assert p["TPM2_PT_LOADED_CURVES"] == "0x5"        # as many as `ecc-curves` lists


def check_ecc_curves(text):
    assert yaml_blocks(text) == {"TPM2_ECC_NIST_P256": "0x3", "TPM2_ECC_NIST_P384": "0x4",
                                 "TPM2_ECC_NIST_P521": "0x5", "TPM2_ECC_BN_P256": "0x10",
                                 "TPM2_ECC_SM2_P256": "0x20"}


def check_empty(text):
    assert text == ""


def check_handles_permanent(text):
    assert text.split() == ["-", "0x40000001", "-", "0x40000007", "-", "0x40000009",
                            "-", "0x4000000A", "-", "0x4000000B", "-", "0x4000000C",
                            "-", "0x4000000D"]


def check_handles_pcr(text):
    assert text.split() == [w for i in range(24) for w in ("-", f"0x{i:X}")]


CAP_CHECKS = {
    "algorithms": check_algorithms, "commands": check_commands, "pcrs": check_pcrs,
    "properties-fixed": check_properties_fixed,
    "properties-variable": check_properties_variable, "ecc-curves": check_ecc_curves,
    "handles-transient": check_empty, "handles-persistent": check_empty,
    "handles-permanent": check_handles_permanent, "handles-pcr": check_handles_pcr,
    "handles-nv-index": check_empty, "handles-loaded-session": check_empty,
    "handles-saved-session": check_empty,
}


@pytest.mark.parametrize("cap", CAPABILITIES)
def test_getcap(via, cap):
    CAP_CHECKS[cap](ok("tpm2_getcap", "-T", via, cap))


def test_getcap_commands_are_the_commands_that_work(daemon):
    """Every command GetCapability lists is accepted; one it does not list is refused."""
    tcti = daemon.tcti()
    listed = yaml_blocks(ok("tpm2_getcap", "-T", tcti, "commands"))
    assert "TPM2_CC_DictionaryAttackLockReset" in listed
    assert "TPM2_CC_NV_ReadPublic" in listed
    assert "TPM2_CC_ClockRateAdjust" in listed
    assert "TPM2_CC_Quote" in listed
    assert "TPM2_CC_FirmwareRead" not in listed
    # TPM2_FirmwareRead (not implemented) as raw bytes: TPM_RC_COMMAND_CODE
    firmware_read = struct.pack(">HII", 0x8001, 14, 0x179) + struct.pack(">I", 0)
    result = subprocess.run(["tpm2_send", "-T", tcti], input=firmware_read,
                            capture_output=True, timeout=30)
    assert result.stdout[6:10] == struct.pack(">I", 0x143), (result.stdout, result.stderr)


# -- tpm2_hash --------------------------------------------------------------------------------

def parse_ticket(blob: bytes):
    tag, hierarchy, size = struct.unpack(">HIH", blob[:8])
    assert len(blob) == 8 + size
    return tag, hierarchy, blob[8:]


@pytest.mark.parametrize("hierarchy", ["o", "n", "e", "p"])
@pytest.mark.parametrize("alg", list(BANKS))
def test_hash(via, tmp_path, alg, hierarchy):
    data = b"The quick brown fox jumps over the lazy dog\n" * 20
    f, digest_file, ticket_file = tmp_path / "data", tmp_path / "digest", tmp_path / "ticket"
    f.write_bytes(data)
    stdout = ok("tpm2_hash", "-T", via, "-g", alg, "-C", hierarchy, "--hex", str(f))
    assert stdout == BANKS[alg](data).hexdigest()
    stdout = ok("tpm2_hash", "-T", via, "-g", alg, "-C", hierarchy,
                "-o", str(digest_file), "-t", str(ticket_file), str(f))
    assert stdout == ""
    assert digest_file.read_bytes() == BANKS[alg](data).digest()
    tag, ticket_hierarchy, hmac = parse_ticket(ticket_file.read_bytes())
    assert tag == TPM_ST_HASHCHECK
    assert ticket_hierarchy == TPM_RH[hierarchy]
    # A NULL ticket for the NULL hierarchy; otherwise an HMAC with the context integrity
    # hash (TPM2_PT_CONTEXT_HASH: sha512).
    assert len(hmac) == (0 if hierarchy == "n" else 64)


def test_hash_tickets_are_deterministic_and_bound_to_the_data(via, tmp_path):
    def ticket(data, hierarchy="o"):
        f, t = tmp_path / "data", tmp_path / "ticket"
        f.write_bytes(data)
        ok("tpm2_hash", "-T", via, "-g", "sha256", "--hex", "-C", hierarchy, "-t", str(t),
           str(f))
        return t.read_bytes()

    assert ticket(b"one") == ticket(b"one")
    assert ticket(b"one") != ticket(b"two")
    assert ticket(b"one", "o") != ticket(b"one", "e")
    # Data that could pass as TPM-generated (starts with TPM_GENERATED_VALUE) gets the NULL
    # ticket, whatever the hierarchy (Part 3 §15.4).
    assert parse_ticket(ticket(b"\xffTCG and more")) == (TPM_ST_HASHCHECK, TPM_RH["n"], b"")


# tpm2_hash uses a hash sequence (HashSequenceStart, SequenceUpdate, SequenceComplete) for
# stdin and for files over 1024 bytes.
@pytest.mark.parametrize("source", ["large-file", "stdin"])
def test_hash_of_large_or_streamed_data(via, tmp_path, source):
    data = bytes(range(256)) * 8                            # 2048 bytes
    if source == "stdin":
        result = subprocess.run(["tpm2_hash", "-T", via, "-g", "sha256", "--hex"],
                                input=data, capture_output=True, timeout=30)
    else:
        f = tmp_path / "data"
        f.write_bytes(data)
        result = subprocess.run(["tpm2_hash", "-T", via, "-g", "sha256", "--hex", str(f)],
                                capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == hashlib.sha256(data).hexdigest()


# -- tpm2_readclock ---------------------------------------------------------------------------

def test_readclock(via):
    first = readclock(via)
    time.sleep(0.05)
    second = readclock(via)
    assert second["clock"] - first["clock"] >= 40            # milliseconds
    assert second["time"] - first["time"] >= 40
    assert second["clock"] >= second["time"]                # clock includes earlier power cycles
    assert second["reset_count"] == first["reset_count"] >= 1
    assert second["restart_count"] == first["restart_count"]


@pytest.fixture(scope="module", autouse=True)
def _aging():
    """A second TPM, started with the module after a disorderly power cycle (no Shutdown),
    so that by the time the tests that need its clock persisted run, little or no waiting
    is left."""
    with run_daemon() as d:
        tcti = d.tcti()
        ok("tpm2_startup", "-c", "-T", tcti)
        power_cycle(d, "mssim")
        ok("tpm2_startup", "-c", "-T", tcti)
        yield tcti, time.monotonic(), readclock(tcti), orderly(tcti)


@pytest.fixture(scope="module")
def aged(_aging):
    """Readings of a new TPM right after its first Startup and once its clock was persisted
    to NV (EngineConfig.clock_update_interval_ms later)."""
    tcti, started, early_clock, early_orderly = _aging
    due = started + EngineConfig().clock_update_interval_ms / 1000 + 0.2
    time.sleep(max(0.0, due - time.monotonic()))
    readclock(tcti)                                          # a command persists the clock
    return (early_clock, early_orderly), (readclock(tcti), orderly(tcti))


def test_clock_becomes_safe_once_persisted(aged):
    (early, _), (late, _) = aged
    assert not early["safe"]      # after a disorderly shutdown the clock may have gone back
    assert late["safe"]
    assert late["clock"] - early["clock"] >= EngineConfig().clock_update_interval_ms


def test_orderly_is_fixed_until_the_next_startup(aged):
    """TPMA_STARTUP_CLEAR.orderly says how the last Startup came about, whatever the clock."""
    (_, early_orderly), (_, late_orderly) = aged
    assert early_orderly == 0
    assert late_orderly == 0


# -- tpm2_testparms ---------------------------------------------------------------------------

ACCEPTED = ["rsa", "rsa1024", "rsa2048", "rsa3072", "rsa4096", "ecc", "ecc256", "ecc384",
            "ecc521", "aes", "aes128cfb", "aes192cbc", "aes256ctr", "aes128ofb", "aes128ecb",
            "hmac", "keyedhash", "xor", "rsa2048:rsassa-sha256", "rsa2048:rsapss",
            "rsa2048:oaep-sha1", "rsa3072:rsaes", "ecc256:ecdsa-sha384", "ecc384:ecdh",
            "ecc256:ecschnorr", "ecc256:ecdaa", "rsa2048:null:aes128cfb", "ecc:null:aes256cfb",
            "ecc_sm2", "sm4", "ecc256:sm2"]

REFUSED = {
    # refused by the TPM (the tool maps the response code to a message)
    "ecc192": "Specified elliptic curve is unsupported",
    "ecc224": "Specified elliptic curve is unsupported",
    "camellia128cfb": "Specified symmetric algorithm or key length is unsupported",
    # refused by tpm2_testparms itself before any command is sent
    "rsa768": "Invalid or unsupported by the tool : rsa768",
    "aes512": "Invalid or unsupported by the tool : aes512",
}


@pytest.mark.parametrize("spec", ACCEPTED)
def test_testparms_accepted(via, spec):
    assert ok("tpm2_testparms", "-T", via, spec) == ""


@pytest.mark.parametrize("spec", list(REFUSED))
def test_testparms_refused(via, spec):
    result = fails("tpm2_testparms", "-T", via, spec)
    assert REFUSED[spec] in result.stderr, result.stderr
