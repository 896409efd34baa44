"""Policy sessions (Part 1 §19.7, Part 3 §23): digests computed by trial sessions against the
Part 3 formulas (written here with hashlib), the same command streams against swtpm, policy
authorization of objects (PolicyPCR-sealed data, the DUP role of TPM2_Duplicate), and
tpm2-pytss / tpm2-tools driving policy sessions (ESAPI duplicate, tpm2_createek +
PolicySecret(TPM_RH_ENDORSEMENT) for tpm2_activatecredential)."""
import hashlib
import shutil
import struct
import subprocess

import pytest

from ctpm.testing import blocking
from ctpm.testing.plugin import tcti_string
from tests.peers import Swtpm, needs_swtpm
from tests.test_duplication import retrying
from tests.test_objects import (RH_OWNER, create, create_primary, load, sensitive_create,
                                split_create, started, template)
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, pcr_select, pw_session, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESAPI, ESYS_TR  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_CC, TPM2_SE, TPM2_SU  # noqa: E402
from tpm2_pytss.types import (TPM2B_DATA, TPM2B_DIGEST, TPM2B_PUBLIC,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPM2B_SENSITIVE_DATA, TPMS_SENSITIVE_CREATE,
                              TPMT_PUBLIC, TPMT_SYM_DEF, TPMT_SYM_DEF_OBJECT, TPMU_SYM_KEY_BITS,
                              TPMU_SYM_MODE, TPML_DIGEST, TPML_PCR_SELECTION)

RH_NULL, RH_ENDORSEMENT = 0x40000007, 0x4000000B
SHA256, NULL = 0x000B, 0x0010
SE_POLICY, SE_TRIAL = 1, 3
CC = {"PolicySecret": 0x151, "PolicyOR": 0x171, "PolicyPCR": 0x17F, "PolicyCommandCode": 0x16C,
      "PolicyCpHash": 0x16E, "PolicyNameHash": 0x170, "PolicyDuplicationSelect": 0x188,
      "PolicyAuthValue": 0x16B, "PolicyPassword": 0x18C, "PolicyGetDigest": 0x189,
      "PolicyRestart": 0x180}
CC_Unseal, CC_Duplicate, CC_PCR_Extend = 0x15E, 0x14B, 0x182
POLICY_FAIL, POLICY_CC, PCR_CHANGED = 0x09D, 0x0A4, 0x128


def S(rc_, n=1):
    """A format-one code for session n."""
    return rc_ | 0x800 | (n << 8)


def P(rc_, n=1):
    return rc_ | 0x40 | (n << 8)


# -- the Part 3 formulas ------------------------------------------------------------------------

def H(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


ZERO = b"\0" * 32


def f_command_code(d, code):
    return H(d, u32(CC["PolicyCommandCode"]), u32(code))


def f_auth_value(d):                  # PolicyPassword extends the same way
    return H(d, u32(CC["PolicyAuthValue"]))


def f_pcr(d, selection: bytes, pcr_digest: bytes):
    return H(d, u32(CC["PolicyPCR"]), selection, pcr_digest)


def f_secret(d, name, ref=b""):
    return H(H(d, u32(CC["PolicySecret"]), name), ref)


def f_or(digests):
    return H(ZERO, u32(CC["PolicyOR"]), *digests)


def f_name_hash(d, name_hash):
    return H(d, u32(CC["PolicyNameHash"]), name_hash)


def f_cp_hash(d, cp):
    return H(d, u32(CC["PolicyCpHash"]), cp)


def f_dup_select(d, obj, parent, include):
    return H(d, u32(CC["PolicyDuplicationSelect"]), obj if include else b"", parent,
             bytes([include]))


# -- raw commands -------------------------------------------------------------------------------

def start(execute, se=SE_POLICY):
    r = execute(cmd(0x176, b2(b"\x11" * 32) + b2(b"") + bytes([se]) + u16(NULL) + u16(SHA256),
                    handles=[RH_NULL, RH_NULL]))
    assert rc(r) == 0, hex(rc(r))
    return struct.unpack(">I", r[10:14])[0], r[16:]


def policy(name, session, body=b"", auth_handle=None, auth=b""):
    if name == "PolicySecret":
        return cmd(CC[name], body, handles=[auth_handle, session], sessions=[pw_session(auth)])
    return cmd(CC[name], body, handles=[session])


def get_digest(execute, session):
    r = execute(policy("PolicyGetDigest", session))
    assert rc(r) == 0, hex(rc(r))
    return params(r)[2:]


def secret_body(nonce=b"", cp=b"", ref=b"", expiration=0):
    return b2(nonce) + b2(cp) + b2(ref) + struct.pack(">i", expiration)


def sha256_pcrs(*pcrs):
    return pcr_select((SHA256, list(pcrs)))


def pcr_values(execute, *pcrs):
    r = execute(cmd(0x17E, sha256_pcrs(*pcrs)))
    body = params(r)
    count = struct.unpack(">I", body[4 + 4 + 6:4 + 4 + 6 + 4])[0]
    out, i = [], 18
    for _ in range(count):
        n = struct.unpack(">H", body[i:i + 2])[0]
        out.append(body[i + 2:i + 2 + n])
        i += 2 + n
    return out


def policy_auth(session, attrs=0x01, auth=b""):
    """A TPMS_AUTH_COMMAND for a policy session (its HMAC or password in `auth`)."""
    return struct.pack(">I", session) + b2(b"\x22" * 32) + bytes([attrs]) + b2(auth)


# -- trial digests against the formulas ---------------------------------------------------------

def test_trial_digests_are_the_part3_formulas():
    tpm = started(seed=b"policy")
    ex = tpm.execute
    s, _ = start(ex, SE_TRIAL)
    assert get_digest(ex, s) == ZERO
    steps = [
        (policy("PolicyCommandCode", s, u32(CC_Unseal)), lambda d: f_command_code(d, CC_Unseal)),
        (policy("PolicyAuthValue", s), f_auth_value),
        (policy("PolicyPassword", s), f_auth_value),
        (policy("PolicyPCR", s, b2(b"") + sha256_pcrs(0, 1, 2)),
         lambda d: f_pcr(d, sha256_pcrs(0, 1, 2), H(*pcr_values(ex, 0, 1, 2)))),
        (policy("PolicyPCR", s, b2(b"\x42" * 32) + sha256_pcrs(7)),
         lambda d: f_pcr(d, sha256_pcrs(7), b"\x42" * 32)),
        (policy("PolicySecret", s, secret_body(ref=b"ref"), auth_handle=RH_OWNER),
         lambda d: f_secret(d, u32(RH_OWNER), b"ref")),
        (policy("PolicyNameHash", s, b2(b"\x07" * 32)), lambda d: f_name_hash(d, b"\x07" * 32)),
    ]
    expect = ZERO
    for c, f in steps:
        assert rc(ex(c)) == 0
        expect = f(expect)
        assert get_digest(ex, s) == expect
    # PolicyRestart; PolicyOR of two branches (a trial session takes any list)
    assert rc(ex(policy("PolicyRestart", s))) == 0
    assert get_digest(ex, s) == ZERO
    branches = [b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]
    assert rc(ex(policy("PolicyOR", s, u32(3) + b"".join(b2(b) for b in branches)))) == 0
    assert get_digest(ex, s) == f_or(branches)
    assert rc(ex(policy("PolicyRestart", s))) == 0
    assert rc(ex(policy("PolicyCpHash", s, b2(b"\x09" * 32)))) == 0
    assert get_digest(ex, s) == f_cp_hash(ZERO, b"\x09" * 32)
    for include in (0, 1):
        assert rc(ex(policy("PolicyRestart", s))) == 0
        body = b2(b"\0\x0b" + b"\x0a" * 32) + b2(b"\0\x0b" + b"\x0b" * 32) + bytes([include])
        assert rc(ex(policy("PolicyDuplicationSelect", s, body))) == 0
        assert get_digest(ex, s) == f_dup_select(ZERO, b"\0\x0b" + b"\x0a" * 32,
                                                 b"\0\x0b" + b"\x0b" * 32, include)
    # the TCG EK policy: PolicySecret(TPM_RH_ENDORSEMENT)
    assert rc(ex(policy("PolicyRestart", s))) == 0
    assert rc(ex(policy("PolicySecret", s, secret_body(), auth_handle=RH_ENDORSEMENT))) == 0
    assert get_digest(ex, s).hex() == ("837197674484b3f81a90cc8d46a5d724"
                                       "fd52d76e06520b64f2a1da1b331469aa")


def test_policy_secret_output_and_checks():
    tpm = started(seed=b"secret")
    ex = tpm.execute
    s, nonce = start(ex)
    r = ex(policy("PolicySecret", s, secret_body(nonce=nonce), auth_handle=RH_OWNER))
    assert rc(r) == 0
    # a null timeout and a null TPMT_TK_AUTH (tag AUTH_SECRET, TPM_RH_NULL, no digest)
    assert params(r) == b2(b"") + u16(0x8023) + u32(RH_NULL) + b2(b"")
    # expiration < 0: a ticket and a timeout
    r = ex(policy("PolicySecret", s, secret_body(nonce=nonce, expiration=-60),
                  auth_handle=RH_OWNER))
    assert rc(r) == 0
    body = params(r)
    assert body[:2] == u16(8) and body[10:12] == u16(0x8023) and body[12:16] == u32(RH_OWNER)
    assert body[16:18] == u16(32)
    # the authorization of the entity is checked
    assert rc(ex(policy("PolicySecret", s, secret_body(), auth_handle=RH_OWNER,
                        auth=b"wrong"))) == S(0x0A2)     # BAD_AUTH: owner is DA-exempt...
    # ...and the nonce, cpHash size and the policy session handle type
    assert rc(ex(policy("PolicySecret", s, secret_body(nonce=b"\x01" * 32),
                        auth_handle=RH_OWNER))) == P(0x08F, 1)
    assert rc(ex(policy("PolicySecret", s, secret_body(cp=b"\x01" * 20),
                        auth_handle=RH_OWNER))) == P(0x095, 2)


def _codes(execute):
    """A stream of policy commands with their outcomes, for ctpm and swtpm alike."""
    out = []
    s, nonce = start(execute)
    t, _ = start(execute, SE_TRIAL)

    def run(c, session=s):
        r = execute(c)
        out.append(rc(r))
        if rc(r) == 0:
            out.append(get_digest(execute, session).hex())

    # digests of every command, in a trial session
    for c in (policy("PolicyCommandCode", t, u32(CC_Unseal)), policy("PolicyAuthValue", t),
              policy("PolicyPassword", t), policy("PolicyPCR", t, b2(b"") + sha256_pcrs(0, 7)),
              policy("PolicyPCR", t, b2(b"\x42" * 32) + sha256_pcrs(16)),
              policy("PolicyPCR", t, b2(b"") + pcr_select((0x0004, [1]))),
              policy("PolicySecret", t, secret_body(ref=b"r"), auth_handle=RH_OWNER),
              policy("PolicySecret", t, secret_body(), auth_handle=RH_ENDORSEMENT),
              policy("PolicyNameHash", t, b2(b"\x05" * 32)),
              policy("PolicyOR", t, u32(2) + b2(b"\x01" * 32) + b2(b"\x02" * 32)),
              policy("PolicyCpHash", t, b2(b"\x06" * 32))):
        run(c, t)
    run(policy("PolicyRestart", t), t)
    run(policy("PolicyDuplicationSelect", t, b2(b"\0\x0b" + b"\x0a" * 32)
               + b2(b"\0\x0b" + b"\x0b" * 32) + b"\x01"), t)
    # checks in a real policy session
    run(policy("PolicyCommandCode", s, u32(CC_Unseal)))
    run(policy("PolicyCommandCode", s, u32(CC_Duplicate)))       # VALUE: another code
    run(policy("PolicyDuplicationSelect", s, b2(b"") + b2(b"") + b"\0"))   # COMMAND_CODE
    run(policy("PolicyRestart", s))
    run(policy("PolicyCommandCode", s, u32(0x1FF)))              # POLICY_CC: no such command
    run(policy("PolicyOR", s, u32(2) + b2(b"\x01" * 32) + b2(b"\x02" * 32)))   # VALUE
    run(policy("PolicyOR", s, u32(2) + b2(b"\0" * 32) + b2(b"\x02" * 32)))     # matches
    run(policy("PolicyOR", s, u32(1) + b2(b"\0" * 32)))          # one branch: SIZE
    run(policy("PolicyPCR", s, b2(b"\x42" * 32) + sha256_pcrs(0)))   # VALUE: not the PCRs
    run(policy("PolicyPCR", s, b2(H(pcr_values(execute, 0)[0])) + sha256_pcrs(0)))
    run(policy("PolicyNameHash", s, b2(b"\x05" * 20)))           # SIZE
    run(policy("PolicyNameHash", s, b2(b"\x05" * 32)))
    run(policy("PolicyNameHash", s, b2(b"\x05" * 32)))           # CPHASH: already set
    run(policy("PolicyCpHash", s, b2(b"\x06" * 32)))             # CPHASH
    run(policy("PolicyRestart", s))
    run(policy("PolicyCpHash", s, b2(b"\x06" * 32)))
    run(policy("PolicyCpHash", s, b2(b"\x06" * 32)))             # the same cpHash again: fine
    run(policy("PolicySecret", s, secret_body(cp=b"\x07" * 32), auth_handle=RH_OWNER))  # CPHASH
    run(policy("PolicySecret", s, secret_body(nonce=b"\x01" * 32), auth_handle=RH_OWNER))
    run(policy("PolicySecret", s, secret_body(nonce=nonce, ref=b"x"), auth_handle=RH_OWNER))
    run(policy("PolicySecret", s, secret_body(), auth_handle=RH_OWNER, auth=b"bad"))
    run(policy("PolicySecret", s, secret_body(), auth_handle=0x80000002))    # not loaded
    # handles that are no policy session
    run(cmd(CC["PolicyAuthValue"], handles=[0x02000000]))
    run(cmd(CC["PolicyAuthValue"], handles=[0x03000010]))
    # a policy session (empty policy) for entities without an authPolicy
    run(cmd(CC_PCR_Extend, u32(0), handles=[16], sessions=[policy_auth(s)]))
    for h in (s, t):
        execute(cmd(0x165, u32(h)))
    return out


@needs_swtpm
@pytest.mark.swtpm
def test_policy_commands_as_swtpm():
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        ours, theirs = _codes(started(seed=b"codes").execute), _codes(sw.execute)
        assert [str(x) for x in ours] == [str(x) for x in theirs]
    finally:
        sw.close()


# -- policy authorization of objects ------------------------------------------------------------

def _trial_digest(execute, *commands):
    t, _ = start(execute, SE_TRIAL)
    for make in commands:
        assert rc(execute(make(t))) == 0
    d = get_digest(execute, t)
    execute(cmd(0x165, u32(t)))
    return d


def _sealed_with_policy(execute, auth_policy, auth=b"", attrs=0x12):
    """A sealed data object (fixedTPM|fixedParent, no userWithAuth) under a new primary."""
    execute = retrying(execute)
    r = execute(create_primary(RH_OWNER, template("ecc256:aes128cfb")))
    root = struct.unpack(">I", r[10:14])[0]
    tmpl = template("keyedhash", objectAttributes=attrs, authPolicy=auth_policy)
    r = execute(create(root, tmpl, sensitive_create(auth, b"sealed by policy")))
    assert rc(r) == 0, hex(rc(r))
    private, public = split_create(r)
    r = execute(load(root, private, public))
    assert rc(r) == 0
    execute(cmd(0x165, u32(root)))
    return struct.unpack(">I", r[10:14])[0]


def _unseal(execute, item, session, auth=b""):
    r = execute(cmd(CC_Unseal, handles=[item], sessions=[policy_auth(session, auth=auth)]))
    return rc(r), (params(r) if rc(r) == 0 else None)


def _pcr_sealed_codes(execute):
    sel = sha256_pcrs(7)        # (a PCR whose changes count: not 16 or 21-23)
    digest = _trial_digest(execute, lambda t: policy("PolicyPCR", t, b2(b"") + sel))
    assert digest == f_pcr(ZERO, sel, H(pcr_values(execute, 7)[0]))
    item = _sealed_with_policy(execute, digest)
    out = []
    s, _ = start(execute)
    out.append(rc(execute(policy("PolicyPCR", s, b2(b"") + sel))))
    out.append(_unseal(execute, item, s))                       # satisfied
    out.append(_unseal(execute, item, s))                       # reset after use: POLICY_FAIL
    out.append(rc(execute(policy("PolicyPCR", s, b2(b"") + sel))))
    extend = u32(1) + u16(SHA256) + b"\x01" * 32
    out.append(rc(execute(cmd(CC_PCR_Extend, extend, handles=[7], sessions=[pw_session()]))))
    out.append(_unseal(execute, item, s))                       # PCR_CHANGED
    out.append(rc(execute(policy("PolicyRestart", s))))
    out.append(rc(execute(policy("PolicyPCR", s, b2(b"") + sel))))
    out.append(_unseal(execute, item, s))                       # other PCR values: POLICY_FAIL
    execute(cmd(0x165, u32(item)))
    # wrong command code, and a plain password for an object without userWithAuth
    cc_item = _sealed_with_policy(execute, f_command_code(ZERO, CC_Duplicate))
    out.append(rc(execute(policy("PolicyRestart", s))))
    out.append(rc(execute(policy("PolicyCommandCode", s, u32(CC_Duplicate)))))
    out.append(_unseal(execute, cc_item, s))                    # POLICY_CC
    out.append(rc(execute(cmd(CC_Unseal, handles=[cc_item], sessions=[pw_session()]))))
    execute(cmd(0x165, u32(cc_item)))
    # PolicyAuthValue: HMAC with the authValue; PolicyPassword: the authValue in the clear
    av = _sealed_with_policy(execute, f_auth_value(ZERO), auth=b"secret")
    out.append(rc(execute(policy("PolicyRestart", s))))
    out.append(rc(execute(policy("PolicyPassword", s))))
    out.append(_unseal(execute, av, s, auth=b"wrong"))
    out.append(rc(execute(policy("PolicyPassword", s))))        # a failed command kept it:
    out.append(_unseal(execute, av, s, auth=b"secret"))         # extended twice, POLICY_FAIL
    out.append(rc(execute(policy("PolicyRestart", s))))
    out.append(rc(execute(policy("PolicyPassword", s))))
    out.append(_unseal(execute, av, s, auth=b"secret"))
    out.append(rc(execute(policy("PolicyAuthValue", s))))
    out.append(_unseal(execute, av, s, auth=b"secret"))         # not an HMAC: AUTH_FAIL
    for h in (s, av):
        execute(cmd(0x165, u32(h)))
    return out


def test_pcr_policy_unseals_until_the_pcr_changes():
    out = _pcr_sealed_codes(started(seed=b"pcrpolicy").execute)
    data = b2(b"sealed by policy")
    assert out == [0, (0, data), (S(POLICY_FAIL), None), 0, 0, (PCR_CHANGED, None), 0, 0,
                   (S(POLICY_FAIL), None), 0, 0, (S(POLICY_CC), None), 0x12F,
                   0, 0, (0x98E, None), 0, (S(POLICY_FAIL), None), 0, 0, (0, data),
                   0, (0x98E, None)]


@needs_swtpm
@pytest.mark.swtpm
def test_policy_authorization_as_swtpm():
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        assert _pcr_sealed_codes(started(seed=b"auth").execute) == _pcr_sealed_codes(sw.execute)
    finally:
        sw.close()


def test_policy_auth_value_hmac_through_the_dispatcher():
    """PolicyAuthValue: the session HMAC is keyed with the entity's authValue; the response
    HMAC too."""
    import hmac as hmac_

    tpm = started(seed=b"authvalue")
    ex = tpm.execute
    item = _sealed_with_policy(ex, f_auth_value(ZERO), auth=b"secret")
    s, nonce_tpm = start(ex)
    assert rc(ex(policy("PolicyAuthValue", s))) == 0      # (no session area: same nonceTPM)
    name_r = ex(cmd(0x173, handles=[item]))
    body = params(name_r)
    n = struct.unpack(">H", body[:2])[0]
    name = body[2 + n + 2:2 + n + 2 + struct.unpack(">H", body[2 + n:4 + n])[0]]
    cp = H(u32(CC_Unseal), name)
    caller = b"\x33" * 32
    mac = hmac_.new(b"secret", cp + caller + nonce_tpm + b"\x01", "sha256").digest()
    sess = struct.pack(">I", s) + b2(caller) + b"\x01" + b2(mac)
    r = ex(cmd(CC_Unseal, handles=[item], sessions=[sess]))
    assert rc(r) == 0, hex(rc(r))
    out = params(r)
    auth = r[14 + len(out):]
    new_nonce = auth[2:34]
    rp = H(u32(0), u32(CC_Unseal), out)
    assert auth[37:] == hmac_.new(b"secret", rp + new_nonce + caller + b"\x01",
                                  "sha256").digest()


# -- through ESAPI -------------------------------------------------------------------------------

AES128 = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(sym=128),
                             mode=TPMU_SYM_MODE(sym=TPM2_ALG.CFB))
NO_SYM = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)


def _esapi_scenario(server, fn):
    def run():
        esapi = ESAPI(tcti_string(server, "mssim"))
        try:
            esapi.startup(TPM2_SU.CLEAR)
            return fn(esapi)
        finally:
            esapi.close()
    return blocking(run)


async def test_esapi_trial_session_digests(ctpm_server):
    def scenario(esapi):
        t = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, NO_SYM,
                                     TPM2_ALG.SHA256)
        esapi.policy_command_code(t, TPM2_CC.Unseal)
        esapi.policy_pcr(t, TPM2B_DIGEST(), TPML_PCR_SELECTION.parse("sha256:0,1"))
        sel = TPML_PCR_SELECTION.parse("sha256:0,1").marshal()
        values = b"".join(bytes(d) for d in esapi.pcr_read(
            TPML_PCR_SELECTION.parse("sha256:0,1"))[2])
        esapi.policy_auth_value(t)
        got = bytes(esapi.policy_get_digest(t))
        esapi.flush_context(t)
        return got, sel, values

    got, sel, values = await _esapi_scenario(ctpm_server, scenario)
    expect = f_auth_value(f_pcr(f_command_code(ZERO, CC_Unseal), sel, H(values)))
    assert got == expect


async def test_esapi_duplicate_with_a_policy_session(ctpm_server):
    """Duplicate needs the DUP role: a policy session with PolicyCommandCode(Duplicate) that
    satisfies the object's authPolicy. The duplicate imports under the new parent."""
    def scenario(esapi):
        dup_policy = f_command_code(ZERO, CC_Duplicate)
        storage = TPMT_PUBLIC.parse(
            "rsa2048:aes128cfb",
            objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth"
                             "|restricted|decrypt")
        root, *_ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(publicArea=storage),
                                        ESYS_TR.OWNER)
        new_parent, *_ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(
                "ecc256:aes128cfb", objectAttributes="fixedtpm|fixedparent|sensitivedataorigin"
                                                     "|userwithauth|restricted|decrypt")),
            ESYS_TR.OWNER)
        sealed = TPMT_PUBLIC.parse("keyedhash", objectAttributes="userwithauth")
        sealed.authPolicy = dup_policy
        sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(
            userAuth=b"pw", data=TPM2B_SENSITIVE_DATA(b"moves by policy")))
        priv, pub, *_ = esapi.create(root, sens, TPM2B_PUBLIC(publicArea=sealed))
        obj = esapi.load(root, priv, pub)
        s = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NO_SYM,
                                     TPM2_ALG.SHA256)
        esapi.policy_command_code(s, TPM2_CC.Duplicate)
        key, dup, seed = esapi.duplicate(obj, new_parent, TPM2B_DATA(), AES128,
                                         session1=s)
        imported = esapi.import_(new_parent, key, pub, dup, seed, AES128)
        moved = esapi.load(new_parent, imported, pub)
        esapi.tr_set_auth(moved, b"pw")
        data = bytes(esapi.unseal(moved))
        # the session's policy was used up: Duplicate again fails (TPM_RC_POLICY_FAIL)
        try:
            esapi.duplicate(obj, new_parent, TPM2B_DATA(), AES128, session1=s)
            again = 0
        except tpm2_pytss.TSS2_Exception as e:
            again = e.rc
        esapi.flush_context(s)
        return data, again

    data, again = await _esapi_scenario(ctpm_server, scenario)
    assert data == b"moves by policy"
    assert again == S(POLICY_FAIL)


async def test_esapi_policy_or_branches(ctpm_server):
    """PolicyOR: either branch (Unseal with PolicyAuthValue, or Unseal via PolicyPassword)
    satisfies the object's policy."""
    def scenario(esapi):
        a = f_auth_value(f_command_code(ZERO, CC_Unseal))
        b = f_command_code(f_auth_value(ZERO), CC_Unseal)  # PolicyPassword digest, then CC
        storage = TPMT_PUBLIC.parse(
            "rsa2048:aes128cfb",
            objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth"
                             "|restricted|decrypt")
        root, *_ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(publicArea=storage),
                                        ESYS_TR.OWNER)
        sealed = TPMT_PUBLIC.parse("keyedhash", objectAttributes="fixedtpm|fixedparent")
        sealed.authPolicy = f_or([a, b])
        sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(
            userAuth=b"pw", data=TPM2B_SENSITIVE_DATA(b"either way")))
        priv, pub, *_ = esapi.create(root, sens, TPM2B_PUBLIC(publicArea=sealed))
        obj = esapi.load(root, priv, pub)
        esapi.tr_set_auth(obj, b"pw")
        out = []
        s = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NO_SYM,
                                     TPM2_ALG.SHA256)
        esapi.policy_command_code(s, TPM2_CC.Unseal)
        esapi.policy_auth_value(s)
        esapi.policy_or(s, TPML_DIGEST([a, b]))
        out.append(bytes(esapi.unseal(obj, session1=s)))
        esapi.policy_password(s)
        esapi.policy_command_code(s, TPM2_CC.Unseal)
        esapi.policy_or(s, TPML_DIGEST([a, b]))
        out.append(bytes(esapi.unseal(obj, session1=s)))
        esapi.flush_context(s)
        return out

    assert await _esapi_scenario(ctpm_server, scenario) == [b"either way"] * 2


# -- tpm2-tools ----------------------------------------------------------------------------------

needs_tools = pytest.mark.skipif(shutil.which("tpm2_policycommandcode") is None,
                                 reason="tpm2-tools is not installed")


def ok(*args, cwd):
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0, f"{' '.join(args)}:\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def daemon():
    from ctpm.testing.process import run_daemon

    with run_daemon() as d:
        ok("tpm2_startup", "-c", "-T", d.tcti("mssim"), cwd=None)
        yield d


@needs_tools
@pytest.mark.tools
def test_tools_policy_digests(daemon, tmp_path):
    t = daemon.tcti("mssim")

    def trial(*steps):
        ok("tpm2_startauthsession", "-T", t, "-S", "s.ctx", cwd=tmp_path)
        for step in steps:
            ok(step[0], "-T", t, "-S", "s.ctx", *step[1:], cwd=tmp_path)
        ok("tpm2_flushcontext", "-T", t, "s.ctx", cwd=tmp_path)
        return (tmp_path / "p.dat").read_bytes()

    assert trial(("tpm2_policycommandcode", "-L", "p.dat", "TPM2_CC_Unseal")) == \
        f_command_code(ZERO, CC_Unseal)
    assert trial(("tpm2_policyauthvalue", "-L", "p.dat")) == f_auth_value(ZERO)
    assert trial(("tpm2_policypassword", "-L", "p.dat")) == f_auth_value(ZERO)
    pcr = trial(("tpm2_policypcr", "-l", "sha256:0,1,2", "-L", "p.dat"))
    r = started(seed=b"unused")       # PCRs 0-2 after Startup at locality 0: zeros
    assert pcr == f_pcr(ZERO, sha256_pcrs(0, 1, 2), H(*pcr_values(r.execute, 0, 1, 2)))
    a = (tmp_path / "p.dat").read_bytes()
    b = trial(("tpm2_policycommandcode", "-L", "p.dat", "TPM2_CC_Duplicate"))
    (tmp_path / "a.dat").write_bytes(a)
    (tmp_path / "b.dat").write_bytes(b)
    assert trial(("tpm2_policyor", "-L", "p.dat", "-l", "sha256:a.dat,b.dat")) == f_or([a, b])
    assert trial(("tpm2_policysecret", "-L", "p.dat", "-c", "e")) == f_secret(
        ZERO, u32(RH_ENDORSEMENT))


@needs_tools
@pytest.mark.tools
def test_tools_unseal_with_a_pcr_policy(daemon, tmp_path):
    t = daemon.tcti("mssim")

    def run(*args):
        return ok(args[0], "-T", t, *args[1:], cwd=tmp_path)

    run("tpm2_startauthsession", "-S", "s.ctx")
    run("tpm2_policypcr", "-S", "s.ctx", "-l", "sha256:23", "-L", "pcr.policy")
    run("tpm2_flushcontext", "s.ctx")
    run("tpm2_createprimary", "-C", "o", "-c", "prim.ctx")
    (tmp_path / "secret").write_bytes(b"pcr-bound secret")
    run("tpm2_create", "-C", "prim.ctx", "-L", "pcr.policy", "-i", "secret",
        "-u", "seal.pub", "-r", "seal.priv")
    run("tpm2_load", "-C", "prim.ctx", "-u", "seal.pub", "-r", "seal.priv", "-c", "seal.ctx")
    out = subprocess.run(["tpm2_unseal", "-T", t, "-c", "seal.ctx", "-p", "pcr:sha256:23"],
                         capture_output=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"pcr-bound secret"
    run("tpm2_pcrextend", "23:sha256=" + "01" * 32)
    out = subprocess.run(["tpm2_unseal", "-T", t, "-c", "seal.ctx", "-p", "pcr:sha256:23"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode != 0 and "0x99d" in out.stderr.lower(), out.stderr
    run("tpm2_pcrreset", "23")
    run("tpm2_flushcontext", "-t")


@needs_tools
@pytest.mark.tools
def test_tools_ek_with_a_policy_secret_session(daemon, tmp_path):
    """tpm2_createek (adminWithPolicy, no userWithAuth, the PolicySecret(TPM_RH_ENDORSEMENT)
    policy): tpm2_activatecredential satisfies it with a policy session."""
    t = daemon.tcti("mssim")

    def run(*args):
        return ok(args[0], "-T", t, *args[1:], cwd=tmp_path)

    run("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    run("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256",
        "-s", "rsassa", "-u", "ak.pub", "-n", "ak.name")
    (tmp_path / "secret.bin").write_bytes(b"for the EK holder")
    name = (tmp_path / "ak.name").read_bytes().hex()
    ok("tpm2_makecredential", "-T", "none", "-u", "ek.pub", "-s", "secret.bin", "-n", name,
       "-o", "cred.bin", cwd=tmp_path)
    run("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
    run("tpm2_policysecret", "-S", "s.ctx", "-c", "e")
    run("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.bin",
        "-o", "out.bin", "-P", "session:s.ctx")
    run("tpm2_flushcontext", "s.ctx")
    assert (tmp_path / "out.bin").read_bytes() == b"for the EK holder"
    # without the policy (a password for the EK): the USER role has no authValue
    r = subprocess.run(["tpm2_activatecredential", "-T", t, "-c", "ak.ctx", "-C", "ek.ctx",
                        "-i", "cred.bin", "-o", "out2.bin"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode != 0
    run("tpm2_flushcontext", "-t")


def test_policy_state_survives_context_save_and_load():
    tpm = started(seed=b"policyctx")
    ex = tpm.execute
    s, _ = start(ex)
    assert rc(ex(policy("PolicyCommandCode", s, u32(CC_Unseal)))) == 0
    r = ex(cmd(0x162, handles=[s]))                       # ContextSave
    assert rc(r) == 0
    assert rc(ex(cmd(0x161, params(r)))) == 0             # ContextLoad
    assert get_digest(ex, s) == f_command_code(ZERO, CC_Unseal)
    assert rc(ex(policy("PolicyCommandCode", s, u32(CC_Duplicate)))) == P(0x084)  # VALUE
