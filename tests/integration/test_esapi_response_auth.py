"""Commands that end or change the entity they are authorized through, through ESAPI with an
HMAC (or, where the command needs the ADMIN role, a policy) session: ESAPI checks the response
HMAC, whose key holds the authValue the reference TPM uses after the command ran - the ended
sequence's own (it is flushed only after the response), the new hierarchy, NV index or PCR
authValue, the old one of a loaded object whose ObjectChangeAuth made a new private area, the
empty one of a deleted index or of lockoutAuth after Clear. (Each scenario was checked against
swtpm 0.x / libtpms with the same ESAPI calls.)

Each scenario gets its own ESAPI: one failed response check leaves an ESAPI context unusable.
"""
import hashlib

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.testing import with_esapi
from tests.peers import Swtpm, needs_swtpm
from tests.test_sessions import RH_OWNER, Client, kdfa
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, pw_session, rc

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR  # noqa: E402
from tpm2_pytss.constants import (TPM2_ALG, TPM2_CC, TPM2_SE, TPMA_NV, TPMA_OBJECT,  # noqa: E402
                                  TPMA_SESSION)
from tpm2_pytss.types import (TPM2B_DIGEST, TPM2B_NV_PUBLIC, TPM2B_PUBLIC,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPML_PCR_SELECTION, TPMS_NV_PUBLIC,
                              TPMS_SENSITIVE_CREATE, TPMT_SIG_SCHEME, TPMT_SYM_DEF,
                              TPMT_TK_HASHCHECK)

NO_SYM = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)
SIGN_ATTRS = (TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
              | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH)


def hmac_session(esapi, bind=ESYS_TR.NONE, continue_session=True):
    s = esapi.start_auth_session(ESYS_TR.NONE, bind, TPM2_SE.HMAC, NO_SYM, TPM2_ALG.SHA256)
    esapi.trsess_set_attributes(s, TPMA_SESSION.CONTINUESESSION if continue_session else 0)
    return s


def policy(esapi, code, kind=TPM2_SE.POLICY):
    """A session with PolicyCommandCode(code) and PolicyAuthValue (so the authValue is in
    its HMAC key); with kind TRIAL, its digest."""
    s = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, kind, NO_SYM, TPM2_ALG.SHA256)
    esapi.policy_command_code(s, code)
    esapi.policy_auth_value(s)
    if kind == TPM2_SE.TRIAL:
        digest = esapi.policy_get_digest(s)
        esapi.flush_context(s)
        return digest
    return s


def expected_policy(code):
    d = hashlib.sha256(bytes(32) + (0x16C).to_bytes(4, "big") + int(code).to_bytes(4, "big"))
    return hashlib.sha256(d.digest() + (0x16B).to_bytes(4, "big")).digest()


def sequence_complete(esapi, continue_session):
    s = hmac_session(esapi, continue_session=continue_session)
    h = esapi.hash_sequence_start(b"sequence auth", TPM2_ALG.SHA256)
    esapi.tr_set_auth(h, b"sequence auth")
    esapi.sequence_update(h, b"first part, ", session1=hmac_session(esapi))
    digest, _ = esapi.sequence_complete(h, b"last part", hierarchy=ESYS_TR.NULL, session1=s)
    return bytes(digest) == hashlib.sha256(b"first part, last part").digest()


def hmac_sequence_complete(esapi, continue_session):
    key = esapi.create_primary(TPM2B_SENSITIVE_CREATE(),
                               TPM2B_PUBLIC.parse("hmac:sha256", objectAttributes=SIGN_ATTRS))[0]
    h = esapi.hmac_start(key, b"hmac sequence auth", TPM2_ALG.SHA256)
    esapi.tr_set_auth(h, b"hmac sequence auth")
    s = hmac_session(esapi, continue_session=continue_session)
    mac, _ = esapi.sequence_complete(h, b"data", hierarchy=ESYS_TR.NULL, session1=s)
    return len(bytes(mac)) == 32


def event_sequence_complete(esapi, continue_session):
    s = hmac_session(esapi, continue_session=continue_session)
    h = esapi.hash_sequence_start(b"event auth", TPM2_ALG.NULL)
    esapi.tr_set_auth(h, b"event auth")
    esapi.pcr_reset(ESYS_TR.PCR16)
    esapi.event_sequence_complete(ESYS_TR.PCR16, h, b"the event",
                                  session1=ESYS_TR.PASSWORD, session2=s)
    _, _, values = esapi.pcr_read(TPML_PCR_SELECTION.parse("sha256:16"))
    return bytes(values[0]) == hashlib.sha256(
        bytes(32) + hashlib.sha256(b"the event").digest()).digest()


def object_change_auth(esapi, continue_session):
    parent = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), "rsa2048:aes128cfb")[0]
    private, public, _, _, _ = esapi.create(
        parent, TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=b"old")),
        TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=SIGN_ATTRS))
    key = esapi.load(parent, private, public)
    esapi.tr_set_auth(key, b"old")
    new_private = esapi.object_change_auth(key, parent, b"new",
                                           session1=hmac_session(esapi, continue_session=
                                                                 continue_session))
    renewed = esapi.load(parent, new_private, public)
    esapi.tr_set_auth(renewed, b"new")
    ticket = TPMT_TK_HASHCHECK(tag=0x8024, hierarchy=0x40000007)       # TPM_RH_NULL
    esapi.sign(renewed, TPM2B_DIGEST(bytes(32)), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket,
               session1=hmac_session(esapi))
    return True


def hierarchy_change_auth(esapi, continue_session):
    """(Unbound sessions: with a session bound to the hierarchy, ESAPI puts the new authValue
    in the response HMAC key and the reference none - test_bound_session_changing_its_
    entity_as_swtpm checks that case without ESAPI.)"""
    for hierarchy in (ESYS_TR.OWNER, ESYS_TR.ENDORSEMENT, ESYS_TR.LOCKOUT, ESYS_TR.PLATFORM):
        s = hmac_session(esapi, continue_session=continue_session)
        esapi.hierarchy_change_auth(hierarchy, b"new auth", session1=s)
        esapi.tr_set_auth(hierarchy, b"new auth")
        esapi.hierarchy_change_auth(hierarchy, b"", session1=hmac_session(esapi))
        esapi.tr_set_auth(hierarchy, b"")
    return True


def nv_change_auth(esapi, continue_session):
    digest = policy(esapi, TPM2_CC.NV_ChangeAuth, TPM2_SE.TRIAL)
    assert bytes(digest) == expected_policy(TPM2_CC.NV_ChangeAuth)
    public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01500010, nameAlg=TPM2_ALG.SHA256, attributes=TPMA_NV.AUTHREAD
        | TPMA_NV.AUTHWRITE, authPolicy=digest, dataSize=8))
    index = esapi.nv_define_space(b"old nv auth", public)
    esapi.tr_set_auth(index, b"old nv auth")
    s = policy(esapi, TPM2_CC.NV_ChangeAuth)
    if not continue_session:
        esapi.trsess_set_attributes(s, 0)
    esapi.nv_change_auth(index, b"new nv auth", session1=s)
    esapi.tr_set_auth(index, b"new nv auth")
    esapi.nv_write(index, b"12345678", session1=hmac_session(esapi), auth_handle=index)
    data = esapi.nv_read(index, 8, session1=hmac_session(esapi), auth_handle=index)
    return bytes(data) == b"12345678"


def nv_undefine_space_special(esapi, continue_session):
    digest = policy(esapi, TPM2_CC.NV_UndefineSpaceSpecial, TPM2_SE.TRIAL)
    public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01500011, nameAlg=TPM2_ALG.SHA256, attributes=TPMA_NV.AUTHREAD
        | TPMA_NV.AUTHWRITE | TPMA_NV.PLATFORMCREATE | TPMA_NV.POLICY_DELETE,
        authPolicy=digest, dataSize=8))
    index = esapi.nv_define_space(b"nv auth", public, auth_handle=ESYS_TR.PLATFORM)
    esapi.tr_set_auth(index, b"nv auth")
    s = policy(esapi, TPM2_CC.NV_UndefineSpaceSpecial)
    if not continue_session:
        esapi.trsess_set_attributes(s, 0)
    esapi.nv_undefine_space_special(index, s, ESYS_TR.PLATFORM, session2=ESYS_TR.PASSWORD)
    _, data = esapi.get_capability(0x1, 0x01500011, 1)        # TPM_CAP_HANDLES
    return 0x01500011 not in list(data.data.handles)


def pcr_set_auth_value(esapi, continue_session):
    s = hmac_session(esapi, continue_session=continue_session)
    esapi.pcr_set_auth_value(ESYS_TR.PCR20, b"pcr auth", session1=s)
    esapi.tr_set_auth(ESYS_TR.PCR20, b"pcr auth")
    esapi.pcr_set_auth_value(ESYS_TR.PCR20, b"", session1=hmac_session(esapi))
    return True


def clear(esapi, continue_session):
    esapi.hierarchy_change_auth(ESYS_TR.LOCKOUT, b"lockout auth")
    esapi.tr_set_auth(ESYS_TR.LOCKOUT, b"lockout auth")
    esapi.clear(ESYS_TR.LOCKOUT, session1=hmac_session(esapi, continue_session=continue_session))
    esapi.tr_set_auth(ESYS_TR.LOCKOUT, b"")
    esapi.hierarchy_change_auth(ESYS_TR.LOCKOUT, b"again", session1=hmac_session(esapi))
    return True


def hierarchy_control_disables_its_authorizer(esapi, continue_session):
    esapi.hierarchy_change_auth(ESYS_TR.OWNER, b"owner auth")
    esapi.tr_set_auth(ESYS_TR.OWNER, b"owner auth")
    esapi.hierarchy_control(ESYS_TR.OWNER, ESYS_TR.OWNER, False,
                            session1=hmac_session(esapi, continue_session=continue_session))
    return True


SCENARIOS = [sequence_complete, hmac_sequence_complete, event_sequence_complete,
             object_change_auth, hierarchy_change_auth, nv_change_auth,
             nv_undefine_space_special, pcr_set_auth_value, clear,
             hierarchy_control_disables_its_authorizer]


@pytest.mark.parametrize("continue_session", [True, False], ids=["continue", "last-use"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_response_hmac_of_commands_that_change_their_entity(ctpm_server, scenario,
                                                                  continue_session):
    assert await with_esapi(ctpm_server, lambda esapi: scenario(esapi, continue_session))



@needs_swtpm
@pytest.mark.swtpm
def test_bound_session_changing_its_entity_as_swtpm():
    """HierarchyChangeAuth through a session bound to that hierarchy: the session does not add
    the authValue to its HMAC key (bound to the entity it authorizes), neither for the command
    nor, though the authValue changed, for the response (the reference decides includeAuth
    once, before the command). The raw client of test_sessions.py checks each response HMAC
    with the session key alone; swtpm and ctpm must both pass."""
    ctpm = Tpm.manufacture(seed=b"bound change")
    sw = Swtpm()
    try:
        for execute in (ctpm.execute, sw.execute):
            assert rc(execute(STARTUP_CLEAR)) == 0
            assert rc(execute(cmd(0x129, b2(b"old"), handles=[RH_OWNER],
                                  sessions=[pw_session()]))) == 0
            c = Client(execute, bind=RH_OWNER)
            c.key = kdfa(b"old", b"ATH", c.nonce_tpm, c.nonce_caller, 256)
            assert rc(c.command(0x129, [RH_OWNER], b2(b"new"))) == 0     # response checked
            assert rc(execute(cmd(0x129, b2(b""), handles=[RH_OWNER],
                                  sessions=[pw_session(b"new")]))) == 0
    finally:
        sw.close()
