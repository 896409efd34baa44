"""Part 3 §26: TPM2_PP_Commands and TPM2_SetAlgorithmSet through tpm2-pytss ESAPI, and
PolicyCommandCode for every implemented command (TPM_CC_PP_Commands was refused while
PP_Commands was not implemented).

The platform's physical-presence signal is set on the in-process TPM
(`Tpm.signal_physical_presence`, what _plat__Signal_PhysicalPresenceOn does for the reference);
everything else goes through ESAPI over the mssim TCTI. The refusals without physical presence
are checked byte for byte against swtpm (which never asserts it).
"""
import struct

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.testing import with_esapi
from ctpm.wire.commands import COMMANDS
from tests.peers import Swtpm, needs_swtpm
from tests.tpmcmd import STARTUP_CLEAR, cmd, params, pw_session, rc, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (TPM2_ALG, TPM2_CAP, TPM2_CC, TPM2_PT, TPM2_RC,  # noqa: E402
                                  TPM2_SE)
from tpm2_pytss.types import TPML_CC, TPMT_SYM_DEF  # noqa: E402

RH_PLATFORM, RH_OWNER, RH_LOCKOUT = 0x4000000C, 0x40000001, 0x4000000A
PP_S1 = TPM2_RC.PP + TPM2_RC.S + TPM2_RC.RC1          # 0x990
# the commands platformAuth may authorize (the reference's PP_COMMAND attribute)
PP_CAPABLE = {TPM2_CC.NV_UndefineSpaceSpecial, TPM2_CC.EvictControl, TPM2_CC.HierarchyControl,
              TPM2_CC.NV_UndefineSpace, TPM2_CC.ChangeEPS, TPM2_CC.ChangePPS, TPM2_CC.Clear,
              TPM2_CC.ClearControl, TPM2_CC.ClockSet, TPM2_CC.HierarchyChangeAuth,
              TPM2_CC.NV_DefineSpace, TPM2_CC.PCR_Allocate, TPM2_CC.PCR_SetAuthPolicy,
              TPM2_CC.PP_Commands, TPM2_CC.SetPrimaryPolicy, TPM2_CC.ClockRateAdjust,
              TPM2_CC.CreatePrimary, TPM2_CC.NV_GlobalWriteLock,
              TPM2_CC.SetCommandCodeAuditStatus, TPM2_CC.CreateLoaded}


def pp_list(esapi):
    more, data = esapi.get_capability(TPM2_CAP.PP_COMMANDS, 0, 256)
    return [int(c) for c in data.data.command]


def rc_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        return 0
    except TSS2_Exception as e:
        return e.rc


def test_the_table_marks_the_pp_capable_commands():
    assert {int(c.code) for c in COMMANDS if c.pp} == {int(c) for c in PP_CAPABLE}


async def test_pp_commands(ctpm_tpm, ctpm_server):
    def scenario(esapi):
        out = {"initial": pp_list(esapi)}
        everything = TPML_CC([int(c.code) for c in COMMANDS] + [0x1FF])
        # without physical presence, PP_Commands itself is refused
        out["no-pp"] = rc_of(esapi.pp_commands, everything, TPML_CC(), session1=ESYS_TR.PASSWORD)
        ctpm_tpm.signal_physical_presence(True)
        esapi.pp_commands(everything, TPML_CC(), session1=ESYS_TR.PASSWORD)
        out["all-set"] = pp_list(esapi)
        # clear all but Clear and NV_DefineSpace (PP_Commands cannot be cleared)
        keep = {int(TPM2_CC.Clear), int(TPM2_CC.NV_DefineSpace)}
        esapi.pp_commands(TPML_CC(), TPML_CC([c for c in out["all-set"] if c not in keep]),
                          session1=ESYS_TR.PASSWORD)
        out["kept"] = pp_list(esapi)
        out["clear-with-pp"] = rc_of(esapi.clear_control, ESYS_TR.PLATFORM, False,
                                     session1=ESYS_TR.PASSWORD)
        ctpm_tpm.signal_physical_presence(False)
        # platformAuth now needs physical presence for Clear; lockoutAuth does not
        out["clear-platform"] = rc_of(esapi.clear, ESYS_TR.PLATFORM, session1=ESYS_TR.PASSWORD)
        out["clear-lockout"] = rc_of(esapi.clear, ESYS_TR.LOCKOUT, session1=ESYS_TR.PASSWORD)
        # a command not on the list needs none
        out["clear-control"] = rc_of(esapi.clear_control, ESYS_TR.PLATFORM, False,
                                     session1=ESYS_TR.PASSWORD)
        # PolicyPhysicalPresence in platformPolicy: the policy needs the signal too
        trial = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
                                         TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        esapi.policy_command_code(trial, TPM2_CC.ClearControl)
        esapi.policy_physical_presence(trial)
        digest = esapi.policy_get_digest(trial)
        esapi.flush_context(trial)
        esapi.set_primary_policy(ESYS_TR.PLATFORM, digest, TPM2_ALG.SHA256,
                                 session1=ESYS_TR.PASSWORD)

        def with_policy():
            s = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                         TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
            esapi.policy_command_code(s, TPM2_CC.ClearControl)
            esapi.policy_physical_presence(s)
            try:
                return rc_of(esapi.clear_control, ESYS_TR.PLATFORM, False, session1=s)
            finally:
                esapi.flush_context(s)
        out["policy-no-pp"] = with_policy()
        ctpm_tpm.signal_physical_presence(True)
        out["policy-pp"] = with_policy()
        # PolicyCommandCode(PP_Commands): accepted now that PP_Commands is implemented
        s = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
                                     TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        out["policycc-pp"] = rc_of(esapi.policy_command_code, s, TPM2_CC.PP_Commands)
        return out

    out = await with_esapi(ctpm_server, scenario)
    assert out["initial"] == [TPM2_CC.PP_Commands]
    assert out["no-pp"] == PP_S1
    assert out["all-set"] == sorted(int(c) for c in PP_CAPABLE)
    assert out["kept"] == sorted([TPM2_CC.Clear, TPM2_CC.NV_DefineSpace, TPM2_CC.PP_Commands])
    assert out["clear-with-pp"] == 0
    assert out["clear-platform"] == PP_S1
    assert out["clear-lockout"] == 0
    assert out["clear-control"] == 0
    assert out["policy-no-pp"] == PP_S1
    assert out["policy-pp"] == 0
    assert out["policycc-pp"] == 0


def test_pp_list_is_kept_in_nv_and_pp_signal_is_not():
    tpm = Tpm.manufacture(seed=b"pp list")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    tpm.signal_physical_presence(True)
    body = u32(1) + u32(TPM2_CC.Clear) + u32(0)
    assert rc(tpm.execute(cmd(0x12D, body, handles=[RH_PLATFORM], sessions=[pw_session()]))) == 0
    tpm.power_off()
    tpm.power_on()
    assert not tpm.physical_presence
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    r = tpm.execute(cmd(0x17A, u32(TPM2_CAP.PP_COMMANDS) + u32(0) + u32(10)))
    b = params(r)
    assert [struct.unpack(">I", b[9 + 4 * i:13 + 4 * i])[0] for i in range(2)] == [
        TPM2_CC.Clear, TPM2_CC.PP_Commands]
    assert rc(tpm.execute(cmd(0x126, handles=[RH_PLATFORM], sessions=[pw_session()]))) == 0x990


async def test_set_algorithm_set(ctpm_server):
    def scenario(esapi):
        def value():
            _, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.ALGORITHM_SET, 1)
            (prop,) = data.data.tpmProperties
            assert prop.property == TPM2_PT.ALGORITHM_SET
            return prop.value
        before = value()
        esapi.set_algorithm_set(0x12345678, session1=ESYS_TR.PASSWORD)
        after = value()
        esapi.set_algorithm_set(0, session1=ESYS_TR.PASSWORD)
        return before, after, value()

    assert await with_esapi(ctpm_server, scenario) == (0, 0x12345678, 0)


def test_policy_command_code_takes_every_implemented_command(ctpm_started_tpm):
    """PolicyCommandCode accepts each command in the table (a fresh trial session each time)
    and refuses a code the TPM does not implement with TPM_RC_POLICY_CC."""
    execute = ctpm_started_tpm.execute
    from tests.test_sessions import start_session
    refused = {}
    for c in COMMANDS + (None,):
        code = 0x1FF if c is None else int(c.code)
        r = execute(start_session(se=3))
        assert rc(r) == 0
        handle = struct.unpack(">I", r[10:14])[0]
        got = rc(execute(cmd(0x16C, u32(code), handles=[handle])))
        if got:
            refused[code] = got
        assert rc(execute(cmd(0x165, u32(handle)))) == 0
    assert refused == {0x1FF: 0x1E4}                 # TPM_RC_POLICY_CC, parameter 1


@needs_swtpm
@pytest.mark.swtpm
def test_without_physical_presence_as_swtpm():
    ours = Tpm.manufacture(seed=b"pp swtpm")
    sw = Swtpm()
    try:
        streams = [
            cmd(0x12D, u32(1) + u32(0x126) + u32(0), handles=[RH_PLATFORM],
                sessions=[pw_session()]),
            cmd(0x12D, u32(0) + u32(0), handles=[RH_OWNER], sessions=[pw_session()]),
            cmd(0x12D, u32(0) + u32(0), handles=[RH_PLATFORM]),
            cmd(0x13F, u32(7), handles=[RH_PLATFORM], sessions=[pw_session()]),
            cmd(0x13F, u32(7), handles=[RH_LOCKOUT], sessions=[pw_session()]),
            cmd(0x17A, u32(TPM2_CAP.PP_COMMANDS) + u32(0) + u32(64)),
            cmd(0x17A, u32(TPM2_CAP.TPM_PROPERTIES) + u32(TPM2_PT.ALGORITHM_SET) + u32(1)),
        ]
        results = []
        for execute in (ours.execute, sw.execute):
            assert rc(execute(STARTUP_CLEAR)) == 0
            results.append([(rc(r), params(r) if rc(r) == 0 else b"")
                            for r in map(execute, streams)])
        assert results[0] == results[1]
        assert [c for c, _ in results[0]][:3] == [0x990, 0x184, 0x125]   # PP, VALUE, AUTH_MISSING
    finally:
        sw.close()
