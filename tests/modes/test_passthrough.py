"""The passthrough mode against swtpm standing in for the hardware TPM: a `ctpm run --mode
passthrough --upstream swtpm:path=...` process, driven with tpm2-tools, tpm2-pytss and raw
commands over mssim; swtpm's own state is read directly (swtpm serves one connection at a
time, so before ctpm connects and after it stopped)."""
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time

import pytest

from ctpm.config import ConfigError, load
from ctpm.modes.identity import ak_template, ek_rsa_template, name_of
from ctpm.testing.process import run_daemon
from tests.peers import SWTPM, Swtpm, retrying
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, pw_session, rc, u16, u32

pytestmark = [pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed"),
              pytest.mark.skipif(shutil.which("tpm2_nvread") is None,
                                 reason="tpm2-tools not installed")]

OWN_NV, OWN_PERSISTENT = "0x01500000-0x015000FF", "0x81000100-0x810001FF"
FOREIGN_NV, FOREIGN_PERSISTENT, EK_CERT = 0x01600000, 0x81000001, 0x01C00002
OWNER, LOCKOUT, ENDORSEMENT, PLATFORM = 0x40000001, 0x4000000A, 0x4000000B, 0x4000000C


class TctiSwtpm(Swtpm):
    """swtpm where tpm2-tss's swtpm TCTI looks for it: data on PATH, control on PATH.ctrl."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ctpm-swtpm-")
        self.data_path = os.path.join(self.dir, "tpm")
        self.ctrl_path = self.data_path + ".ctrl"
        self._spawn()
        self.sock = None

    @property
    def tcti(self):
        return f"swtpm:path={self.data_path}"

    def disconnect(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def swtpm():
    sw = TctiSwtpm()
    assert rc(sw.execute(STARTUP_CLEAR)) == 0
    sw.disconnect()
    yield sw
    sw.close()


def passthrough(sw, *extra, config=None):
    args = ["--mode", "passthrough", "--upstream", sw.tcti, "--mssim", "127.0.0.1:0",
            "--nv-range", OWN_NV, "--persistent-range", OWN_PERSISTENT, *extra]
    if config:
        args += ["--config", config]
    sw.disconnect()
    return run_daemon(*args, timeout=30)


class Raw:
    """Raw commands over the daemon's mssim port (tpm2-pytss's TCTI, no ESAPI)."""

    def __init__(self, d):
        from tpm2_pytss import TCTILdr
        self.tcti = TCTILdr.parse(d.tcti("mssim"))

    def __call__(self, command):
        self.tcti.transmit(command)
        return bytes(self.tcti.receive(16384, 30000))

    def close(self):
        self.tcti.close()


def tool(tcti, *args, check=True):
    r = subprocess.run([args[0], "-T", tcti, *args[1:]], capture_output=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stderr.decode())
    return r


# --- raw commands ------------------------------------------------------------------------------

def create_primary(hierarchy, template):
    return cmd(0x131, b2(u16(0) + u16(0)) + b2(template) + u16(0) + u32(0),
               handles=[hierarchy], sessions=[pw_session()])


def nv_define(index, size=8, auth=OWNER):
    public = u32(index) + u16(0xB) + u32(0x00060006) + b2(b"") + u16(size)  # owner/auth r/w
    return cmd(0x12A, b2(b"") + b2(public), handles=[auth], sessions=[pw_session()])


def evict(obj, persistent, auth=OWNER):
    return cmd(0x120, u32(persistent), handles=[auth, obj], sessions=[pw_session()])


def nv_read(index, size=8):
    return cmd(0x14E, u16(size) + u16(0), handles=[index, index], sessions=[pw_session()])


def nv_write(index, data=b"12345678"):
    return cmd(0x137, b2(data) + u16(0), handles=[index, index], sessions=[pw_session()])


def get_cap(cap, first, count=256):
    return cmd(0x17A, u32(cap) + u32(first) + u32(count))


def cap_list(rsp):
    count = struct.unpack(">I", rsp[15:19])[0]
    return list(struct.unpack(f">{count}I", rsp[19:19 + 4 * count]))


def snapshot(sw):
    """What the guard must keep from changing, read directly on swtpm: every handle, the
    variable properties (hierarchy enables, DA counters, ...), the PCRs, the persistent
    key's public area and the NV indices' contents."""
    execute = retrying(sw.execute)
    state = {"handles": [cap_list(execute(get_cap(1, first))) for first in
                         (0x01000000, 0x81000000)],
             "variable": execute(get_cap(6, 0x200, 64))[10:],
             "pcrs": execute(cmd(0x17E, u32(1) + u16(0xB) + bytes([3, 0xFF, 0xFF, 0xFF])))[10:],
             "public": execute(cmd(0x173, handles=[FOREIGN_PERSISTENT]))[10:]}
    for index in (FOREIGN_NV, EK_CERT):
        state[index] = execute(nv_read(index))[10:]
    sw.disconnect()
    return state


def provision_foreign(sw):
    """What the host and another guest keep on the TPM: an EK certificate index (shared
    range), another guest's NV index and persistent key."""
    execute = retrying(sw.execute)
    for index in (FOREIGN_NV, EK_CERT):
        assert rc(execute(nv_define(index))) == 0
        assert rc(execute(nv_write(index))) == 0
    rsp = execute(create_primary(OWNER, ak_template("ecc")))
    handle = struct.unpack(">I", rsp[10:14])[0]
    assert rc(execute(evict(handle, FOREIGN_PERSISTENT))) == 0
    execute(cmd(0x165, u32(handle)))
    sw.disconnect()


def test_same_results_as_direct(swtpm, tmp_path):
    """tpm2-tools and tpm2-pytss give the same answers through ctpm as directly: the same
    primary keys (derived from the seeds), the same deterministic RSASSA signature, the same
    PCRs; HMAC sessions (tpm2-tools' default for CreatePrimary) pass unbroken."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RH, TPM2_SE, TPM2_ST

    def run(tcti, tag):
        outputs = {}
        for name, args in (("ek", ["tpm2_createek", "-G", "rsa", "-c", str(tmp_path / f"{tag}.ek"),
                                   "-u", str(tmp_path / f"{tag}-ek.pub")]),
                           ("pcr", ["tpm2_pcrread", "sha256:0,1,2"]),
                           ("primary", ["tpm2_createprimary", "-C", "o", "-G", "rsa2048",
                                        "-c", str(tmp_path / f"{tag}.ctx")])):
            outputs[name] = tool(tcti, *args).stdout
        tool(tcti, "tpm2_flushcontext", "-t")
        esapi = ESAPI(TCTILdr.parse(tcti))
        try:
            session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
                                               _aes_cfb(), TPM2_ALG.SHA256)
            template = TPM2B_PUBLIC.parse("rsa2048:rsassa-sha256", objectAttributes=0x00040072)
            key, public = esapi.create_primary(None, template, ESYS_TR.OWNER,
                                               session1=session)[:2]
            signature = esapi.sign(key, b"\x11" * 32, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                                   TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK,
                                                     hierarchy=TPM2_RH.NULL),
                                   session1=session)
            outputs["sign"] = bytes(signature.signature.rsassa.sig)
            outputs["public"] = public.marshal()
            esapi.flush_context(key)
            esapi.flush_context(session)
        finally:
            esapi.close()
        return outputs

    direct = run(swtpm.tcti, "direct")
    swtpm.disconnect()
    with passthrough(swtpm) as d:
        through = run(d.tcti("mssim"), "through")
    assert through == direct
    assert (tmp_path / "through-ek.pub").read_bytes() == (tmp_path / "direct-ek.pub").read_bytes()


def _aes_cfb():
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.types import TPMT_SYM_DEF
    sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 128
    sym.mode.aes = TPM2_ALG.CFB
    return sym


GUARDED = [
    # (what, command, documented code)
    ("Clear", cmd(0x126, handles=[LOCKOUT], sessions=[pw_session()]), 0x143),
    ("ClearControl", cmd(0x127, b"\x01", handles=[LOCKOUT], sessions=[pw_session()]), 0x143),
    ("ChangeEPS", cmd(0x124, handles=[PLATFORM], sessions=[pw_session()]), 0x143),
    ("ChangePPS", cmd(0x125, handles=[PLATFORM], sessions=[pw_session()]), 0x143),
    ("HierarchyControl", cmd(0x121, u32(ENDORSEMENT) + b"\x00", handles=[OWNER],
                             sessions=[pw_session()]), 0x143),
    ("PP_Commands", cmd(0x12D, u32(0) + u32(0), handles=[PLATFORM], sessions=[pw_session()]),
     0x143),
    ("SetAlgorithmSet", cmd(0x13F, u32(0), handles=[PLATFORM], sessions=[pw_session()]), 0x143),
    ("FieldUpgradeStart", cmd(0x12F, b2(b"") + b2(b"") + u16(0x10), handles=[PLATFORM, 0x80000000],
                              sessions=[pw_session()]), 0x143),
    ("NV_UndefineSpaceSpecial", cmd(0x11F, handles=[FOREIGN_NV, PLATFORM],
                                    sessions=[pw_session(), pw_session()]), 0x143),
    ("HierarchyChangeAuth", cmd(0x129, b2(b"x"), handles=[OWNER], sessions=[pw_session()]),
     0x143),
    ("DictionaryAttackLockReset", cmd(0x139, handles=[LOCKOUT], sessions=[pw_session()]), 0x143),
    ("Shutdown", cmd(0x145, u16(1)), 0x143),
    ("CreatePrimary(platform)", create_primary(PLATFORM, ak_template("ecc")), 0x185),
    ("NV_DefineSpace(platform)", nv_define(0x01500001, auth=PLATFORM), 0x185),
    ("NV_DefineSpace out of range", nv_define(0x01600001), 0x2C4),
    ("NV_UndefineSpace(foreign)", cmd(0x122, handles=[OWNER, FOREIGN_NV],
                                      sessions=[pw_session()]), 0x28B),
    ("NV_Read(foreign)", nv_read(FOREIGN_NV), 0x18B),
    ("NV_ReadPublic(foreign)", cmd(0x169, handles=[FOREIGN_NV]), 0x18B),
    ("NV_Write(foreign)", nv_write(FOREIGN_NV, b"AAAAAAAA"), 0x18B),
    ("NV_Write(EK certificate)", nv_write(EK_CERT, b"AAAAAAAA"), 0x18B),
    ("NV_UndefineSpace(EK certificate)", cmd(0x122, handles=[OWNER, EK_CERT],
                                             sessions=[pw_session()]), 0x28B),
    ("ReadPublic(foreign key)", cmd(0x173, handles=[FOREIGN_PERSISTENT]), 0x18B),
    ("EvictControl(foreign key)", evict(FOREIGN_PERSISTENT, FOREIGN_PERSISTENT), 0x28B),
    ("EvictControl out of range", evict(0x80000000, 0x81000002), 0x1C4),
    ("PCR_Extend", cmd(0x182, u32(1) + u16(0xB) + bytes(32), handles=[0],
                       sessions=[pw_session()]), 0x1A7),
    ("PCR_Reset", cmd(0x13D, handles=[16], sessions=[pw_session()]), 0x1A7),
    ("GetCapability(handles) in a session", cmd(0x17A, u32(1) + u32(0x01000000) + u32(8),
                                                sessions=[pw_session()]), 0x1C4),
]


def test_guard_refuses_and_swtpm_state_is_untouched(swtpm):
    provision_foreign(swtpm)
    before = snapshot(swtpm)
    with passthrough(swtpm) as d:
        raw = Raw(d)
        try:
            key = struct.unpack(">I", raw(create_primary(OWNER, ak_template("ecc")))[10:14])[0]
            for what, command, code in GUARDED:
                if what == "EvictControl out of range":
                    command = evict(key, 0x81000002)
                assert hex(rc(raw(command))) == hex(code), what
            # what the guest may do: its own range, reading the shared EK certificate
            assert rc(raw(nv_define(0x01500001))) == 0
            assert rc(raw(nv_write(0x01500001))) == 0
            assert raw(nv_read(0x01500001))[16:24] == b"12345678"
            assert rc(raw(nv_read(EK_CERT))) == 0
            assert rc(raw(evict(key, 0x81000100))) == 0
            # GetCapability shows what the guest may use, only
            nv = cap_list(raw(get_cap(1, 0x01000000)))
            persistent = cap_list(raw(get_cap(1, 0x81000000)))
            assert nv == [0x01500001, EK_CERT] and persistent == [0x81000100]
            commands = [a & 0xFFFF for a in cap_list(raw(get_cap(2, 0x11F)))]
            assert 0x126 not in commands and 0x124 not in commands and 0x131 in commands
            # cleaning up its own range works
            assert rc(raw(evict(0x81000100, 0x81000100))) == 0
            assert rc(raw(cmd(0x122, handles=[OWNER, 0x01500001], sessions=[pw_session()]))) == 0
            assert rc(raw(cmd(0x165, u32(key)))) == 0
        finally:
            raw.close()
    after = snapshot(swtpm)
    variable = [dict(struct.unpack(">II", s["variable"][9 + 8 * i:17 + 8 * i]) for i in range(
        struct.unpack(">I", s["variable"][5:9])[0])) for s in (before, after)]
    assert {p: (v, variable[1][p]) for p, v in variable[0].items() if variable[1][p] != v} == {}
    assert after == before


def test_upstream_killed_and_restarted(swtpm, tmp_path):
    config = tmp_path / "ctpm.toml"
    config.write_text("[passthrough]\ntimeout = 1.5\n")
    with passthrough(swtpm, config=str(config)) as d:
        raw = Raw(d)
        try:
            getrandom = cmd(0x17B, u16(8))
            assert rc(raw(getrandom)) == 0
            # hung: swtpm stopped, the command went out: TPM_RC_FAILURE after the deadline
            os.kill(swtpm.proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            assert rc(raw(getrandom)) == 0x101
            assert time.monotonic() - t0 < 5
            os.kill(swtpm.proc.pid, signal.SIGCONT)
            assert rc(raw(getrandom)) == 0
            # killed: the next command fails, then (swtpm gone) TPM_RC_RETRY: nothing was sent
            swtpm.proc.kill()
            swtpm.proc.wait(5)
            assert rc(raw(getrandom)) in (0x101, 0x922)
            assert rc(raw(getrandom)) == 0x922
            swtpm.restart()
            # a new TPM: it needs its Startup, then the guest is served again
            assert rc(raw(STARTUP_CLEAR)) == 0
            assert rc(raw(getrandom)) == 0
            assert d.proc.poll() is None
        finally:
            raw.close()


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    path = tmp_path_factory.mktemp("sim") / "amd-sp"
    return SimulatedSP(str(path), "milan")


def test_binding_evidence_names_upstream_ek_and_ak(swtpm, sp, tmp_path):
    from ctpm.modes.anchor import decode_evidence, verify_anchor
    from ctpm.snp.verify import Trust, Verifier
    from ctpm.modes.tpmclient import TpmClient

    client = TpmClient(swtpm.execute)
    publics = []
    for template in (ek_rsa_template(), ak_template("ecc")):
        handle, public, _ = client.create_primary(ENDORSEMENT, template)
        client.flush(handle)
        publics.append(public)
    ek, ak = publics
    sim_dir = sp.directory
    with passthrough(swtpm, "--anchor", "--snp-provider", "simulated",
                     "--snp-sim-dir", sim_dir) as d:
        nonce = os.urandom(64)
        (tmp_path / "nonce.bin").write_bytes(nonce)
        tcti = d.tcti("mssim")
        tool(tcti, "tpm2_nvwrite", "0x01400002", "-C", "o", "-i", str(tmp_path / "nonce.bin"))
        tool(tcti, "tpm2_nvread", "0x01400001", "-C", "o", "-o", str(tmp_path / "ev.bin"))
        # the EK a guest makes through ctpm with tpm2_createek is the one the manifest names
        tool(tcti, "tpm2_createek", "-G", "rsa", "-c", str(tmp_path / "ek.ctx"),
             "-u", str(tmp_path / "ek.pub"))
    ev = decode_evidence((tmp_path / "ev.bin").read_bytes())
    assert ev.nonce == nonce and ev.provider == "simulated" and ev.manifest_version == 1
    verifier = Verifier(Trust(extra_arks=(sp.ark,)))
    anchored = verify_anchor(ev.report, nonce, ev.manifest, 1, ek_public=ek, ak_public=ak,
                             verifier=verifier, cert_table=ev.cert_table or sp.cert_table())
    assert anchored.ek_name == name_of(ek) and anchored.ak_name == name_of(ak)
    assert name_of((tmp_path / "ek.pub").read_bytes()[2:]) == name_of(ek)
    from ctpm.snp.errors import SnpError
    with pytest.raises(SnpError):
        verify_anchor(ev.report, os.urandom(64), ev.manifest, 1, verifier=verifier,
                      cert_table=ev.cert_table or sp.cert_table())


@pytest.mark.parametrize("argv, message", [
    (["--upstream", "device:/dev/tpm0"], "no resource manager"),
    (["--upstream", "device"], "no resource manager"),
    ([], "needs the TPM's TCTI"),
    (["--upstream", "mssim:", "--nv-range", "0x81000000-0x81000001"], "must start with 0x01"),
    (["--upstream", "mssim:", "--snp-provider", "simulated"], "no SNP anchor"),
])
def test_config_refusals(argv, message):
    names = {"--upstream": "upstream", "--nv-range": "nv_range",
             "--snp-provider": "snp_provider"}
    kwargs = {names[argv[i]]: argv[i + 1] for i in range(0, len(argv), 2)}
    with pytest.raises(ConfigError, match=message):
        load(mode="passthrough", **kwargs)
    assert load(mode="passthrough", upstream="device:/dev/tpm0",
                upstream_force=True).upstream_force
    with pytest.raises(ConfigError, match="only with --mode passthrough"):
        load(upstream="mssim:")


def test_documented_passthrough_defaults_are_the_code(tmp_path):
    """conf/ctpm.toml's [passthrough] defaults ("# key = value", continued lines too),
    uncommented under mode passthrough, equal the code's."""
    import re
    from pathlib import Path

    from ctpm.config import Config
    from ctpm.modes.guard import DEFAULT_REFUSE
    text = (Path(__file__).parents[2] / "conf" / "ctpm.toml").read_text()
    section = text[text.index("[passthrough]"):]
    lines, keys = [], []
    for line in section.splitlines():
        m = re.match(r"^# (\w+) = (.*)$", line)
        if m:
            keys.append(m.group(1))
            lines.append(f"{m.group(1)} = {m.group(2)}")
        elif re.match(r"^#\s{5,}\S", line) and lines:
            lines[-1] += " " + line[1:].strip()
    assert sorted(keys) == sorted(["upstream", "force", "timeout", "nv_range",
                                   "persistent_range", "shared", "refuse", "pcr_writes",
                                   "anchor"])
    body = "\n".join(l for l in lines if not l.startswith(("nv_range", "persistent_range")))
    path = tmp_path / "c.toml"
    path.write_text(f'[mode]\nmode = "passthrough"\n[passthrough]\n{body}\n')
    config = load(str(path))
    assert config.upstream == "device:/dev/tpmrm0"
    assert tuple(config.passthrough_refuse) == DEFAULT_REFUSE
    for name in ("upstream_force", "upstream_timeout", "passthrough_shared",
                 "passthrough_pcr_writes", "passthrough_anchor", "passthrough_nv_range"):
        assert getattr(config, name) == getattr(Config(), name), name


@pytest.fixture
def abrmd(swtpm, tmp_path):
    """tpm2-abrmd on a private D-Bus session bus, in front of swtpm: the shared upstream."""
    if shutil.which("tpm2-abrmd") is None or shutil.which("dbus-daemon") is None:
        pytest.skip("tpm2-abrmd or dbus-daemon is not installed")
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1",
                            f"--address=unix:path={tmp_path}/bus"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = bus.stdout.readline().strip()
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address)
    name = f"com.ctpm.Test{os.getpid()}"
    broker = subprocess.Popen(["tpm2-abrmd", "--session", "--allow-root", f"--dbus-name={name}",
                               f"--tcti={swtpm.tcti}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tcti = f"tabrmd:bus_type=session,bus_name={name}"
    deadline = time.monotonic() + 10
    while subprocess.run(["tpm2_getrandom", "-T", tcti, "4"], env=env,
                         capture_output=True).returncode:
        assert time.monotonic() < deadline and broker.poll() is None, "abrmd did not start"
        time.sleep(0.1)
    old = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = address     # for the ctpm processes we start
    try:
        yield tcti
    finally:
        if old is None:
            del os.environ["DBUS_SESSION_BUS_ADDRESS"]
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = old
        for proc in (broker, bus):
            proc.terminate()
            proc.wait(5)


def test_two_guests_through_one_abrmd_do_not_see_each_other(abrmd):
    upstream = type("Upstream", (), {"tcti": abrmd, "disconnect": lambda self: None})()
    with passthrough(upstream) as a, passthrough(upstream) as b:
        ra, rb = Raw(a), Raw(b)
        try:
            rsp = ra(create_primary(OWNER, ak_template("ecc")))
            assert rc(rsp) == 0
            handle = struct.unpack(">I", rsp[10:14])[0]
            assert cap_list(ra(get_cap(1, 0x80000000))) == [handle]
            assert cap_list(rb(get_cap(1, 0x80000000))) == []
            assert rc(ra(cmd(0x173, handles=[handle]))) == 0
            assert rc(rb(cmd(0x173, handles=[handle]))) != 0
            # tpm2-tools through guest B sees no transient object either
            r = tool(b.tcti("mssim"), "tpm2_getcap", "handles-transient")
            assert r.stdout.strip() == b""
        finally:
            ra.close()
            rb.close()


def test_mssim_upstream_stopped_then_resumed(tmp_path):
    """An mssim upstream (a ctpm standard daemon: the TCTI keeps its sockets, so ctpm waits on
    the command socket in its event loop): stopped, the guest gets TPM_RC_FAILURE within the
    deadline; continued, service resumes on a new connection."""
    config = tmp_path / "ctpm.toml"
    config.write_text("[passthrough]\ntimeout = 1.5\n")
    with run_daemon("--mssim", "127.0.0.1:0", timeout=30) as upstream:
        up = type("Upstream", (), {"tcti": upstream.tcti("mssim"),
                                   "disconnect": lambda self: None})()
        with passthrough(up, config=str(config)) as d:
            raw = Raw(d)
            try:
                getrandom = cmd(0x17B, u16(8))
                assert rc(raw(getrandom)) == 0
                assert rc(raw(cmd(0x126, handles=[LOCKOUT], sessions=[pw_session()]))) == 0x143
                os.kill(upstream.proc.pid, signal.SIGSTOP)
                try:
                    t0 = time.monotonic()
                    assert rc(raw(getrandom)) == 0x101
                    assert time.monotonic() - t0 < 5
                finally:
                    os.kill(upstream.proc.pid, signal.SIGCONT)
                assert rc(raw(getrandom)) == 0
            finally:
                raw.close()


def test_composite_attestation_through_passthrough(swtpm, sp, tmp_path):
    """`ctpm attest`'s library path through a passthrough instance with --anchor in front of
    swtpm (libtpms quotes): the AK the manifest names is made again from its template, the
    evidence verifies; a quote over PCRs changed afterwards does not. Then the manifest-v0
    AK certification's wrapped key imported by libtpms under its EK (the wrapper is the
    spec's, not only ctpm's)."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

    from ctpm.attest import evidence as E
    from ctpm.attest.akcert import Certifier
    from ctpm.attest.verify import AttestPolicy, verify_evidence
    from ctpm.snp.errors import SnpError
    from ctpm.snp.verify import Trust
    pol = AttestPolicy(trust=Trust(extra_arks=(sp.ark,)))
    certifier = Certifier()
    config = tmp_path / "ctpm.toml"
    config.write_text("[passthrough]\npcr_writes = true\n")     # to move PCR 7 on
    with passthrough(swtpm, "--anchor", "--snp-provider", "simulated",
                     "--snp-sim-dir", sp.directory, config=str(config)) as d:
        tcti = d.tcti("mssim")
        nonce = os.urandom(64)
        doc = E.collect(tcti, nonce)
        a = verify_evidence(doc, nonce, pol)
        assert a.provider == "simulated" and a.manifest_version == 1
        tool(tcti, "tpm2_pcrextend", "7:sha256=" + "ab" * 32)
        later = E.collect(tcti, nonce)
        pcrs_then = E.unb64u(doc["pcrs"][1])
        with pytest.raises(SnpError) as e:
            verify_evidence(dict(later, pcrs=[E.MEDIA["pcrs"], E.b64u(pcrs_then)]), nonce, pol)
        assert e.value.check == "pcr_digest"

        with ESAPI(TCTILdr.parse(tcti)) as esapi:
            handles = []
            for template in (ek_rsa_template(), ak_template("ecc")):
                public = TPM2B_PUBLIC.unmarshal(len(template).to_bytes(2, "big") + template)[0]
                handles.append(esapi.create_primary(TPM2B_SENSITIVE_CREATE(), public,
                                                    primary_handle=ESYS_TR.ENDORSEMENT))
            (ek, ek_pub, *_), (ak, ak_pub, *_) = handles
            ek_public = bytes(ek_pub.publicArea.marshal())
            from ctpm.attest.akcert import certify_ak
            got = certify_ak(esapi, certifier.challenge(nonce, ek_public), nonce, ek=ek, ak=ak)
            esapi.flush_context(ek)
            esapi.flush_context(ak)
    ak_public, attest, signature = got
    assert ak_public == bytes(ak_pub.publicArea.marshal())
    assert certifier.check(nonce=nonce, ek_public=ek_public, ak_public=ak_public,
                           attest=attest, signature=signature) == name_of(ak_public)
