"""The passthrough mode against swtpm standing in for the hardware TPM: a `ctpm run --mode
passthrough --upstream swtpm:path=...` process, driven with tpm2-tools, tpm2-pytss and raw
commands over mssim; swtpm's own state is read directly (swtpm serves one connection at a
time, so before ctpm connects and after it stopped)."""
import os
import shutil
import signal
import struct
import subprocess
import time

import pytest

from ctpm.config import ConfigError, load
from ctpm.modes.identity import ak_template, ek_rsa_template, name_of
from ctpm.testing.process import run_daemon
from tests.peers import SWTPM, retrying
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, pw_session, rc, u16, u32

pytestmark = [pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed"),
              pytest.mark.skipif(shutil.which("tpm2_nvread") is None,
                                 reason="tpm2-tools not installed")]

OWN_NV, OWN_PERSISTENT = "0x01500000-0x015000FF", "0x81000100-0x810001FF"
FOREIGN_NV, FOREIGN_PERSISTENT, EK_CERT = 0x01600000, 0x81000001, 0x01C00002
OWNER, LOCKOUT, ENDORSEMENT, PLATFORM = 0x40000001, 0x4000000A, 0x4000000B, 0x4000000C


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
                       sessions=[pw_session()]), 0x907),      # TPM_RC_LOCALITY
    ("PCR_Reset", cmd(0x13D, handles=[16], sessions=[pw_session()]), 0x907),
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
            # ... and the counts agree with the list, as the Linux driver requires: it asks
            # for TPM_PT_TOTAL_COMMANDS commands and needs exactly that many
            rsp = raw(get_cap(6, 0x129, 2))
            props = list(struct.unpack(">4I", rsp[19:35]))
            total, library = props[1], props[3]
            assert props[0::2] == [0x129, 0x12A] and total == library == len(commands)
            rsp = raw(get_cap(2, 0x11F, total))
            assert rsp[10] == 0 and len(cap_list(rsp)) == total
            rsp = raw(get_cap(2, 0x11F, 10))            # fewer: exactly those, more to come
            assert rsp[10] == 1 and [a & 0xFFFF for a in cap_list(rsp)] == commands[:10]
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


@pytest.mark.parametrize("loader", [False, True], ids=["native", "tcti-loader"])
def test_upstream_killed_and_restarted(swtpm, tmp_path, loader):
    """swtpm stopped, continued, killed and restarted under the guest, over ctpm's own
    swtpm protocol (one connection kept open) and over tpm2-pytss's TCTI loader."""
    config = tmp_path / "ctpm.toml"
    config.write_text(f"[passthrough]\ntimeout = 1.5\ntcti_loader = {str(loader).lower()}\n")
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
        # malformed commands for the served indices: a response code, never a dropped daemon
        raw = Raw(d)
        try:
            good = nv_read(0x01400001)
            for bad in (good[:16], good[:21], good[:24], good[:-3],
                        good[:18] + u32(200) + good[22:],
                        cmd(0x14E, u16(8) + u16(0), handles=[0x01400001, 0x01400001],
                            sessions=[pw_session(), pw_session()]),
                        cmd(0x137, b2(b"x" * 65) + u16(0), handles=[0x01400002, 0x01400002],
                            sessions=[pw_session()]),
                        cmd(0x137, b2(b"x") + u16(0), handles=[0x01400001, 0x01400001],
                            sessions=[pw_session()]),
                        cmd(0x14E, u16(8) + u16(0), handles=[0x40000001, 0x01400001])):
                bad = bad[:2] + u32(len(bad)) + bad[6:]
                assert rc(raw(bad)) != 0
            assert rc(raw(good)) == 0
        finally:
            raw.close()
        assert d.proc.poll() is None
        d._stderr.seek(0)
        assert b"Traceback" not in d._stderr.read()
    ev = decode_evidence((tmp_path / "ev.bin").read_bytes())
    assert ev.nonce == nonce and ev.provider == "simulated" and ev.manifest_version == 1
    verifier = Verifier(Trust(extra_arks=(sp.ark,)))
    anchored = verify_anchor(ev.report, nonce, ev.manifest, 1, ek_public=ek, ak_public=ak,
                             require_activation=True, verifier=verifier, cert_table=ev.cert_table or sp.cert_table())
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
                                   "anchor", "tcti_loader", "owner_auth_file",
                                   "endorsement_auth_file"])
    body = "\n".join(l for l in lines if not l.startswith(("nv_range", "persistent_range",
                                                             "owner_auth", "endorsement_auth")))
    path = tmp_path / "c.toml"
    path.write_text(f'[mode]\nmode = "passthrough"\n[passthrough]\n{body}\n')
    config = load(str(path))
    assert config.upstream == "device:/dev/tpmrm0"
    assert tuple(config.passthrough_refuse) == DEFAULT_REFUSE
    for name in ("upstream_force", "upstream_timeout", "passthrough_shared",
                 "passthrough_pcr_writes", "passthrough_anchor", "passthrough_nv_range",
                 "upstream_tcti_loader", "upstream_owner_auth_file"):
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


def _owner_auth(sw, value):
    """Set swtpm's owner authorization directly (a guest may not: HierarchyChangeAuth is
    refused by the guard)."""
    execute = retrying(sw.execute)
    assert rc(execute(cmd(0x129, b2(value), handles=[OWNER], sessions=[pw_session()]))) == 0
    sw.disconnect()


@pytest.mark.parametrize("owner_auth, encrypted", [(b"", False), (b"owner-secret", False),
                                                    (b"owner-secret", "aes"), (b"", "xor")])
def test_hmac_session_reused_across_served_and_forwarded(swtpm, sp, tmp_path, owner_auth,
                                                         encrypted):
    """One ESAPI HMAC session used for the evidence index (answered by ctpm) and for commands
    forwarded to swtpm, in both orders: every response HMAC verifies (ESAPI checks them) and
    swtpm accepts the session afterwards (its nonceTPM is the one the guest holds). Under a
    non-empty owner authorization, given to ctpm by file."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import TPM2B_PUBLIC
    from ctpm.modes.anchor import decode_evidence

    extra = []
    if owner_auth:
        _owner_auth(swtpm, owner_auth)
        (tmp_path / "owner").write_bytes(owner_auth)
        extra = ["--upstream-owner-auth-file", str(tmp_path / "owner")]
    with passthrough(swtpm, "--anchor", "--snp-provider", "simulated",
                     "--snp-sim-dir", sp.directory, *extra) as d:
        esapi = ESAPI(TCTILdr.parse(d.tcti("mssim")))
        try:
            esapi.tr_set_auth(ESYS_TR.OWNER, owner_auth)
            from tpm2_pytss.constants import TPMA_SESSION
            from tpm2_pytss.types import TPMT_SYM_DEF
            sym = _aes_cfb()
            if encrypted == "xor":
                sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.XOR)
                sym.keyBits.exclusiveOr = TPM2_ALG.SHA256
            session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
                                               sym, TPM2_ALG.SHA256)
            if encrypted:       # the guest's parameters encrypted both ways
                esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION
                                            | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT)
            evidence = esapi.tr_from_tpmpublic(0x01400001)
            request = esapi.tr_from_tpmpublic(0x01400002)
            template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=0x00040072)
            nonce = os.urandom(64)
            for _ in range(2):
                esapi.nv_write(request, nonce, 0, ESYS_TR.OWNER, session1=session)
                head = bytes(esapi.nv_read(evidence, 64, 0, ESYS_TR.OWNER, session1=session))
                assert head.startswith(b"CTPMEVID")
                key = esapi.create_primary(None, template, ESYS_TR.OWNER,
                                           session1=session)[0]
                esapi.flush_context(key)
            blob = b"".join(bytes(esapi.nv_read(evidence, 1024, off, ESYS_TR.OWNER,
                                                session1=session))
                            for off in range(0, 8192, 1024))
            assert decode_evidence(blob).nonce == nonce
            esapi.flush_context(session)
            # a wrong owner authorization is refused as the TPM refuses it: BAD_AUTH (ownerAuth
            # is outside DA protection; test_served_indices_refuse_... compares with swtpm)
            from tpm2_pytss import TSS2_Exception
            esapi.tr_set_auth(ESYS_TR.OWNER, owner_auth + b"x")
            with pytest.raises(TSS2_Exception) as e:
                esapi.nv_read(evidence, 64, 0, ESYS_TR.OWNER, session1=ESYS_TR.PASSWORD)
            assert e.value.rc == 0x9A2
        finally:
            esapi.close()


def test_served_indices_refuse_sizes_and_offsets_as_the_tpm_does(swtpm, sp):
    """ESAPI reads and writes beyond the upstream's TPM_PT_NV_BUFFER_MAX (swtpm: 1024) or
    past the end: the indices ctpm serves answer what swtpm answers for an ordinary index
    (forwarded to it through the same daemon), in the same order of checks (authorization
    first)."""
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR

    ordinary = 0x01500000
    execute = retrying(swtpm.execute)
    assert rc(execute(nv_define(ordinary, size=8))) == 0
    assert rc(execute(nv_write(ordinary))) == 0
    with passthrough(swtpm, "--anchor", "--snp-provider", "simulated",
                     "--snp-sim-dir", sp.directory) as d:
        esapi = ESAPI(TCTILdr.parse(d.tcti("mssim")))
        try:
            handles = {i: esapi.tr_from_tpmpublic(i)
                       for i in (ordinary, 0x01400001, 0x01400002)}
            sizes = {ordinary: 8, 0x01400001: 8192, 0x01400002: 64}

            def refused(call, *args):
                with pytest.raises(TSS2_Exception) as e:
                    call(*args, ESYS_TR.OWNER, session1=ESYS_TR.PASSWORD)
                return e.value.rc
            for index, nv in handles.items():
                size = sizes[index]
                assert refused(esapi.nv_read, nv, 1025, 0) == 0x1C4, hex(index)
                assert refused(esapi.nv_read, nv, 0xFFFF, 1) == 0x1C4, hex(index)
                assert refused(esapi.nv_read, nv, 0, size + 1) == 0x2C4, hex(index)
                assert refused(esapi.nv_read, nv, 2, size - 1) == 0x146, hex(index)
                assert bytes(esapi.nv_read(nv, 1024 if size > 1024 else 1, size - 1
                                           if size <= 1024 else 0, ESYS_TR.OWNER))
                assert refused(esapi.nv_write, nv, b"x" * 1025, 0) == 0x1D5, hex(index)
                if index != 0x01400001:     # the evidence index is not written by anyone
                    assert refused(esapi.nv_write, nv, b"x", size + 1) == 0x2C4, hex(index)
                    assert refused(esapi.nv_write, nv, b"x" * 2, size - 1) == 0x146
            # authorization is checked first, and refused as swtpm refuses it (TPM_RC_BAD_AUTH:
            # ownerAuth is outside dictionary-attack protection)
            esapi.tr_set_auth(ESYS_TR.OWNER, b"wrong")
            for nv in handles.values():
                assert refused(esapi.nv_read, nv, 1025, 0) == 0x9A2
                assert refused(esapi.nv_write, nv, b"x" * 1025, 0) == 0x9A2
        finally:
            esapi.close()
        assert d.proc.poll() is None


def _vendor_ek_certificate(sw, ca_dir):
    """What a TPM vendor leaves: the RSA EK's certificate (ctpm manufacture's format, from a
    local CA) in NV 0x01C00002, written with platform authorization directly on swtpm."""
    from ctpm import manufacture as m
    from ctpm.modes.credential import public_key
    from ctpm.modes.tpmclient import RH_PLATFORM, TpmClient
    ca = m.load_or_create_ca(ca_dir=str(ca_dir))
    from ctpm.modes.identity import ek_ecc_template
    client = TpmClient(retrying(sw.execute))
    attrs = (m.NV_PLATFORMCREATE | m.NV_AUTHREAD | m.NV_OWNERREAD | m.NV_PPREAD
             | m.NV_PPWRITE | m.NV_NO_DA)
    publics = []
    for template, kind, index in ((ek_rsa_template(), "rsa", EK_CERT),
                                  (ek_ecc_template(), "ecc", 0x01C0000A)):
        handle, ek, _ = client.create_primary(ENDORSEMENT, template)
        client.flush(handle)
        publics.append(ek)
        der = m.ek_certificate(ca, public_key(ek), kind, {})
        client.nv_define(RH_PLATFORM, index, attrs, len(der))
        for offset in range(0, len(der), 1024):
            client.nv_write(RH_PLATFORM, index, der[offset:offset + 1024], offset)
    sw.disconnect()
    return publics[0], ca[1]


def test_activation_ek_certificate_and_verifier_challenge(swtpm, sp, tmp_path):
    """With a vendor EK certificate on the TPM: the evidence carries it and the activation
    record; `ctpm verify-ek --ek-ca --require-activation` accepts it and refuses another CA;
    and a verifier's own challenge (MakeCredential in software with the manifest's EK and
    AK) is opened through passthrough by the guest (PolicySecret + ActivateCredential on
    the chip), while a credential for another AK is not."""
    import sys
    from cryptography.hazmat.primitives.serialization import Encoding
    from ctpm.modes.anchor import decode_evidence, verify_anchor
    from ctpm.modes.credential import CredentialError, activate, make_credential
    from ctpm.modes.identity import Identity
    from ctpm.modes.tpmclient import TpmClient, TpmCommandError
    from ctpm.snp.errors import SnpError
    from ctpm.snp.verify import Trust, Verifier

    ek, ca_cert = _vendor_ek_certificate(swtpm, tmp_path / "ca")
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
    from ctpm import manufacture as m
    other = m.load_or_create_ca(ca_dir=str(tmp_path / "other"))[1]
    (tmp_path / "other.pem").write_bytes(other.public_bytes(Encoding.PEM))
    with passthrough(swtpm, "--anchor", "--snp-provider", "simulated",
                     "--snp-sim-dir", sp.directory) as d:
        nonce = os.urandom(64)
        (tmp_path / "nonce.bin").write_bytes(nonce)
        tcti = d.tcti("mssim")
        tool(tcti, "tpm2_nvwrite", "0x01400002", "-C", "o", "-i", str(tmp_path / "nonce.bin"))
        tool(tcti, "tpm2_nvread", "0x01400001", "-C", "o", "-o", str(tmp_path / "ev.bin"))
        ev = decode_evidence((tmp_path / "ev.bin").read_bytes())
        identity = Identity.from_manifest(ev.manifest, 1)
        assert identity.ek_rsa == ek and identity.activated()
        assert [index for index, _ in identity.ek_certs] == [EK_CERT, 0x01C0000A]
        assert identity.ek_ecc is not None

        # the verifier's challenge, answered by the guest on the chip through ctpm
        raw = Raw(d)
        try:
            client = TpmClient(raw)
            ek_handle, _, _ = client.create_primary(ENDORSEMENT, ek_rsa_template())
            ak_handle, _, ak_name = client.create_primary(ENDORSEMENT, ak_template("ecc"))
            assert ak_name == name_of(identity.ak)
            secret = os.urandom(32)
            blob, enc = make_credential(identity.ek_rsa, name_of(identity.ak), secret)
            assert activate(client, ek_handle, ak_handle, blob, enc) == secret
            blob, enc = make_credential(identity.ek_rsa, name_of(ek), secret)  # another Name
            with pytest.raises(TpmCommandError) as e:
                activate(client, ek_handle, ak_handle, blob, enc)
            assert e.value.rc & 0xBF == 0x9F        # TPM_RC_INTEGRITY
            for handle in (ek_handle, ak_handle):
                client.flush(handle)
        finally:
            raw.close()

        # the composite flow: ctpm attest through passthrough (the AK made again from the
        # manifest: nothing is persisted on the chip), ctpm verify with a policy that
        # requires the activation and the vendor's EK certificate
        n2 = os.urandom(64).hex()
        r = subprocess.run([sys.executable, "-m", "ctpm", "attest", "--tcti", tcti,
                            "--nonce", n2, "-o", str(tmp_path / "composite.json")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    ark = os.path.join(sp.directory, "ark.pem")
    for ca, code in (("ca.pem", 0), ("other.pem", 1)):
        (tmp_path / "policy.toml").write_text(
            f'[snp]\ntrust_ark = ["{ark}"]\n[tpm]\nrequire_activation = true\n'
            f'ek_ca = ["{tmp_path / ca}"]\n')
        r = subprocess.run([sys.executable, "-m", "ctpm", "verify",
                            str(tmp_path / "composite.json"), "--nonce", n2,
                            "--policy", str(tmp_path / "policy.toml")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == code, r.stderr
        assert code == 0 or "ek_certificate" in r.stderr

    verifier = Verifier(Trust(extra_arks=(sp.ark,)))
    table = ev.cert_table or sp.cert_table()
    verify_anchor(ev.report, nonce, ev.manifest, 1, ek_public=ek, require_activation=True,
                  ek_cas=[ca_cert], verifier=verifier, cert_table=table)
    with pytest.raises(SnpError) as e:
        verify_anchor(ev.report, nonce, ev.manifest, 1, ek_cas=[other], verifier=verifier,
                      cert_table=table)
    assert e.value.check == "ek_certificate"
    # the CLI, with the simulated SP's ARK
    (tmp_path / "ark.pem").write_bytes(open(os.path.join(sp.directory, "ark.pem"), "rb").read())
    base = [sys.executable, "-m", "ctpm", "verify-ek", "--evidence", str(tmp_path / "ev.bin"),
            "--nonce", nonce.hex(), "--trust-ark", str(tmp_path / "ark.pem"),
            "--require-activation"]
    r = subprocess.run(base + ["--ek-ca", str(tmp_path / "ca.pem"), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '"activation": true' in r.stdout and '"ek_certificate": "verified"' in r.stdout
    r = subprocess.run(base + ["--ek-ca", str(tmp_path / "other.pem")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: ek_certificate: ")
    with pytest.raises(CredentialError):
        from ctpm.modes.credential import check_ek_certificate
        check_ek_certificate(identity.ek_certs[0][1], identity.ak, [ca_cert])


def test_passthrough_instances_in_ctpm_host(swtpm, sp, tmp_path):
    """`ctpm host serve` with an instance directory: a passthrough instance (anchored, owner
    auth from a file) beside a standard one; the guest is served and guarded through the
    host, the evidence index answers, `ctpm host status` describes the upstream, and
    removing the instance closes its upstream connection (swtpm then serves another
    client)."""
    import json
    import re
    from ctpm.testing.process import command, environment, run_host
    (tmp_path / "owner").write_bytes(b"")
    d = tmp_path / "instances"
    d.mkdir()
    (d / "pt.toml").write_text(f'''
[listen]
mssim = "127.0.0.1:0"
[mode]
mode = "passthrough"
[snp]
provider = "simulated"
sim_dir = "{sp.directory}"
[passthrough]
upstream = "{swtpm.tcti}"
anchor = true
nv_range = "{OWN_NV}"
persistent_range = "{OWN_PERSISTENT}"
owner_auth_file = "{tmp_path / 'owner'}"
''')
    (d / "std.toml").write_text('[listen]\nmssim = "127.0.0.1:0"\n')
    swtpm.disconnect()
    ctl = tmp_path / "host.sock"

    def host(*args):
        r = subprocess.run(command("host", *args, "--control", str(ctl)), capture_output=True,
                           text=True, env=environment(), timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    with run_host(ctl, "--dir", str(d)) as proc:
        status = json.loads(host("status", "pt"))["instances"][0]
        assert status["backend"]["backend"] == "passthrough", status
        assert status["backend"]["reports"] == 1 and status["backend"]["activated"] is True
        assert status["backend"]["ek_certificates"] == []
        port = re.search(r"mssim=127\.0\.0\.1:(\d+)", json.dumps(status)).group(1)
        tcti = f"mssim:host=127.0.0.1,port={port}"
        assert len(bytes.fromhex(tool(tcti, "tpm2_getrandom", "--hex", "8").stdout.decode())) == 8
        r = tool(tcti, "tpm2_clear", "-c", "l", check=False)
        assert r.returncode != 0 and b"0x143" in r.stderr.lower() + r.stdout.lower()
        tool(tcti, "tpm2_nvread", "0x01400001", "-C", "o", "-s", "8", "-o",
             str(tmp_path / "head"))
        assert (tmp_path / "head").read_bytes() == b"CTPMEVID"
        host("remove", "pt")
        assert proc.poll() is None and json.loads(host("status", "std"))["instances"]
        # added at runtime: the same upstream, now free again
        host("add", "pt2", "--mssim", "127.0.0.1:0", "--mode", "passthrough",
             "--upstream", swtpm.tcti, "--nv-range", OWN_NV)
        status = json.loads(host("status", "pt2"))["instances"][0]
        port = re.search(r"mssim=127\.0\.0\.1:(\d+)", json.dumps(status)).group(1)
        tcti = f"mssim:host=127.0.0.1,port={port}"
        tool(tcti, "tpm2_nvdefine", "0x01500001", "-C", "o", "-s", "8")
        r = tool(tcti, "tpm2_nvdefine", "0x01600001", "-C", "o", "-s", "8", check=False)
        assert r.returncode != 0
        host("remove", "pt2")
    assert rc(retrying(swtpm.execute)(get_cap(6, 0x200, 1))) == 0


def test_authorization_sources(swtpm, tmp_path):
    """Two sources for one authorization: a config error naming both; an unreadable file or
    a value longer than a digest: one line naming the source (never the value), exit 1."""
    import sys
    with pytest.raises(ConfigError, match="only one source of the owner authorization"):
        load(mode="passthrough", upstream=swtpm.tcti,
             upstream_auth={("owner", "file"): "/x", ("owner", "fd"): 5})
    (tmp_path / "long").write_bytes(b"s3cret" * 11)
    for path, message in ((tmp_path / "missing", "No such file"),
                          (tmp_path / "long", "longer than 64 bytes")):
        r = subprocess.run([sys.executable, "-m", "ctpm", "run", "--mode", "passthrough",
                            "--upstream", swtpm.tcti, "--mssim", "127.0.0.1:0",
                            "--upstream-owner-auth-file", str(path)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "s3cret" not in r.stderr


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
