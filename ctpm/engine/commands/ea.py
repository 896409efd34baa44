"""Enhanced authorization (Part 1 §19.7, Part 3 §23): the policy commands that build up a
policy session's policyDigest and its other conditions, and the check the dispatcher makes
when a policy session authorizes an entity (the reference's CheckPolicyAuthSession).

A trial session (TPM_SE_TRIAL) only computes digests; a real policy session checks each
assertion when it is made and remembers what must hold when the session is used: a command
code, a cpHash or nameHash, the PCR change counter, a timeout, and whether the entity's
authValue goes into the HMAC (PolicyAuthValue) or arrives as a password (PolicyPassword).

Implemented: PolicyRestart, PolicyGetDigest, PolicyCommandCode, PolicyAuthValue,
PolicyPassword, PolicySecret, PolicySigned, PolicyTicket, PolicyAuthorize, PolicyLocality,
PolicyCounterTimer, PolicyTemplate, PolicyPhysicalPresence, PolicyDuplicationSelect,
PolicyNameHash, PolicyCpHash, PolicyPCR, PolicyOR, PolicyNV, PolicyAuthorizeNV,
PolicyNvWritten. A policy with PolicyPhysicalPresence authorizes only while the platform
asserts physical presence (`Tpm.signal_physical_presence`), else TPM_RC_PP.
Objects, NV indices (engine/commands/nv.py: POLICYREAD/POLICYWRITE, and NV_ChangeAuth's ADMIN role),
and hierarchies with a SetPrimaryPolicy, can be authorized with a policy; PCRs have no
authPolicy in this build.
"""
import hmac
import struct

from construct import Container

from ...crypto import hashes
from ...errors import TpmError
from ...wire.commands import BY_CODE, Auth
from ...wire.constants import TPM_ALG, TPM_CC, TPM_HT, TPM_RC, TPM_RH, TPM_SE, TPM_ST
from ...wire.structures import HASH_SIZES, MAX_DIGEST_SIZE, TPML_PCR_SELECTION
from ..subsystems import nv_indices
from ..subsystems.hierarchy import hierarchy_policy
from ..subsystems.pcr_banks import PCR_POLICY_GROUP, filter_selection
from .capability import one_property
from .signature import validate_signature, verified_ticket

_CC = struct.Struct(">I")
TICKET_HASH = "sha256"          # the reference's CONTEXT_INTEGRITY_HASH_ALG
EXPIRATION_BIT = 1 << 63        # timeout buffer flag: the ticket expires on a TPM Reset


# -- policy session state (the reference's SessionResetPolicyData) ------------------------------

def reset_policy(session, now_ms: int = 0):
    """Back to a fresh policy: zero digest, no conditions (PolicyRestart; and after every
    successful command that used the session with continueSession)."""
    session.policy_digest = b"\0" * HASH_SIZES[session.auth_hash]
    session.command_code = 0
    session.cp_hash = b""
    session.is_cp_hash = False
    session.is_name_hash = False
    session.is_auth_value_needed = False
    session.is_password_needed = False
    session.pcr_counter = 0
    session.timeout = 0
    session.start_time = now_ms
    session.command_locality = 0
    session.is_pp_required = False
    session.is_template_hash = False
    session.is_parameters_hash = False
    session.check_nv_written = False
    session.nv_written_state = False


def _extend(session, *parts: bytes):
    """policyDigest := H(policyDigest || parts...)."""
    session.policy_digest = hashes.digest(session.auth_hash,
                                          session.policy_digest + b"".join(parts))


def _is_trial(session) -> bool:
    return session.kind == TPM_SE.TRIAL


def _session(tpm, handle):
    return tpm.state.sessions[handle]


def _cp_hash_occupied(session) -> bool:
    return (session.is_cp_hash or session.is_name_hash or session.is_template_hash
            or session.is_parameters_hash)


def _context_update(session, code, name, ref, cp_hash, timeout):
    """PolicyContextUpdate (Policy_spt.c): the digest, and the cpHash/timeout conditions."""
    _extend(session, _CC.pack(code), name)
    if ref is not None:
        _extend(session, ref)
    if cp_hash:
        session.cp_hash = cp_hash
        session.is_cp_hash = True
    if timeout and (session.timeout == 0 or session.timeout > timeout):
        session.timeout = timeout


# -- the commands -------------------------------------------------------------------------------

def policy_restart(tpm, ctx, session_handle):
    """Part 3 §11.2 (a session command; kept here with the policy state it resets)."""
    reset_policy(_session(tpm, session_handle), tpm.state.time())


def policy_get_digest(tpm, ctx, policy_session):
    """Part 3 §23.19."""
    return (_session(tpm, policy_session).policy_digest,)


def policy_command_code(tpm, ctx, policy_session, code):
    """Part 3 §23.11: the session may only authorize `code`."""
    session = _session(tpm, policy_session)
    if session.command_code != 0 and session.command_code != code:
        raise TpmError(TPM_RC.VALUE, param=1)
    if code not in BY_CODE:
        raise TpmError(TPM_RC.POLICY_CC, param=1)
    _extend(session, _CC.pack(TPM_CC.PolicyCommandCode), _CC.pack(code))
    session.command_code = code


def policy_auth_value(tpm, ctx, policy_session):
    """Part 3 §23.17: the HMAC of the authorizing session includes the entity's authValue."""
    session = _session(tpm, policy_session)
    _extend(session, _CC.pack(TPM_CC.PolicyAuthValue))
    session.is_auth_value_needed = True
    session.is_password_needed = False


def policy_password(tpm, ctx, policy_session):
    """Part 3 §23.18: the authValue arrives in the clear; the digest is PolicyAuthValue's."""
    session = _session(tpm, policy_session)
    _extend(session, _CC.pack(TPM_CC.PolicyAuthValue))
    session.is_password_needed = True
    session.is_auth_value_needed = False


def _auth_timeout(tpm, session, expiration: int, nonce: bytes) -> int:
    """ComputeAuthTimeout (Policy_spt.c), in milliseconds of TPM time."""
    if expiration == 0:
        return 0
    expiration = abs(expiration)
    if not nonce:
        return expiration * 1000 + tpm.state.time() % 1000
    return session.start_time + expiration * 1000


def _parameter_checks(tpm, session, timeout, cp_hash_a, nonce, p_nonce, p_cp, p_exp):
    """PolicyParameterChecks (Policy_spt.c)."""
    if nonce and nonce != session.nonce_tpm:
        raise TpmError(TPM_RC.NONCE, param=p_nonce)
    if timeout and timeout < tpm.state.time():
        raise TpmError(TPM_RC.EXPIRED, param=p_exp)
    if cp_hash_a:
        if len(cp_hash_a) != len(session.policy_digest):
            raise TpmError(TPM_RC.SIZE, param=p_cp)
        if session.cp_hash and cp_hash_a != session.cp_hash:
            raise TpmError(TPM_RC.CPHASH)


def entity_hierarchy(tpm, handle: int) -> int:
    """EntityGetHierarchy: an object's hierarchy; a permanent handle's own (owner for the
    others); PCRs belong to the owner."""
    obj = tpm._object(handle)
    if obj is not None:
        return obj.hierarchy
    if handle in (TPM_RH.PLATFORM, TPM_RH.ENDORSEMENT, TPM_RH.NULL):
        return handle
    if handle >> 24 == TPM_HT.NV_INDEX:          # an index belongs to who created it
        index = nv_indices.get(tpm.state, handle)
        if index is not None and index.attributes & nv_indices.A.PLATFORMCREATE:
            return TPM_RH.PLATFORM
    return TPM_RH.OWNER


def _timeout_and_ticket(tpm, tag, entity, name, expiration, trial, timeout, nonce_tpm,
                        cp_hash_a, policy_ref):
    """PolicySigned/PolicySecret's outputs: with a negative expiration (and a real session)
    the timeout and a ticket for PolicyTicket; otherwise an empty timeout and a null ticket.
    The timeout's top bit says the ticket dies with the TPM Reset (no nonceTPM was given)."""
    if expiration < 0 and not trial:
        expires_on_reset = not nonce_tpm
        timeout &= ~EXPIRATION_BIT
        ticket = _auth_ticket(tpm, tag, entity_hierarchy(tpm, entity), timeout,
                              expires_on_reset, cp_hash_a, policy_ref, name)
        if expires_on_reset:
            timeout |= EXPIRATION_BIT
        return (struct.pack(">Q", timeout), ticket)
    return (b"", Container(tag=tag, hierarchy=TPM_RH.NULL, digest=b""))


def _auth_ticket(tpm, tag, hierarchy, timeout, expires_on_reset, cp_hash_a, policy_ref,
                 name):
    """TicketComputeAuth (Part 2 §10.7.5): HMAC over the ticket's terms with the
    hierarchy's proof."""
    state = tpm.state
    msg = [struct.pack(">H", tag), cp_hash_a, policy_ref, name, struct.pack(">Q", timeout)]
    if timeout:
        msg.append(struct.pack(">Q", state.nv["reset_count"]))      # the time epoch
        if expires_on_reset:
            msg.append(struct.pack(">Q", state.nv["total_reset_count"]))
    mac = hmac.new(state.proof(hierarchy), b"".join(msg), TICKET_HASH).digest()
    return Container(tag=tag, hierarchy=hierarchy, digest=mac)


def policy_secret(tpm, ctx, auth_handle, policy_session, nonce_tpm, cp_hash_a, policy_ref,
                  expiration):
    """Part 3 §23.4: the caller showed it can authorize `auth_handle` (the dispatcher has
    checked that authorization); the digest takes its Name and policyRef."""
    session = _session(tpm, policy_session)
    timeout = 0
    trial = _is_trial(session)
    if not trial:
        timeout = _auth_timeout(tpm, session, expiration, nonce_tpm)
        _parameter_checks(tpm, session, timeout, cp_hash_a, nonce_tpm, 1, 2, 4)
    name = tpm.entity_name(auth_handle)
    _context_update(session, TPM_CC.PolicySecret, name, policy_ref, cp_hash_a, timeout)
    return _timeout_and_ticket(tpm, TPM_ST.AUTH_SECRET, auth_handle, name, expiration, trial,
                               timeout, nonce_tpm, cp_hash_a, policy_ref)


def _signature_hash(signature):
    """CryptGetSignHashAlg: the hash algorithm a signature was made with."""
    sig = signature.signature
    return sig.hashAlg if signature.sigAlg == TPM_ALG.HMAC else sig.hash


def policy_signed(tpm, ctx, auth_object, policy_session, nonce_tpm, cp_hash_a, policy_ref,
                  expiration, auth):
    """Part 3 §23.3: `auth` is a signature by `auth_object` over
    aHash = H(nonceTPM || expiration || cpHashA || policyRef); the digest takes the key's
    Name and policyRef. A trial session checks no signature."""
    session = _session(tpm, policy_session)
    timeout = 0
    trial = _is_trial(session)
    if not trial:
        timeout = _auth_timeout(tpm, session, expiration, nonce_tpm)
        _parameter_checks(tpm, session, timeout, cp_hash_a, nonce_tpm, 1, 2, 4)
        alg = _signature_hash(auth)
        if alg not in HASH_SIZES:
            raise TpmError(TPM_RC.SCHEME, param=5)
        a_hash = hashes.digest(alg, nonce_tpm + struct.pack(">i", expiration) + cp_hash_a
                               + policy_ref)
        try:
            validate_signature(tpm.state.object(auth_object), a_hash, auth)
        except TpmError as e:
            raise e.located(param=5) from None
    name = tpm.entity_name(auth_object)
    _context_update(session, TPM_CC.PolicySigned, name, policy_ref, cp_hash_a, timeout)
    return _timeout_and_ticket(tpm, TPM_ST.AUTH_SIGNED, auth_object, name, expiration, trial,
                               timeout, nonce_tpm, cp_hash_a, policy_ref)


def policy_ticket(tpm, ctx, policy_session, timeout, cp_hash_a, policy_ref, auth_name, ticket):
    """Part 3 §23.5: a PolicySigned or PolicySecret assertion again, from its ticket."""
    session = _session(tpm, policy_session)
    if _is_trial(session):
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    if len(timeout) != 8:
        raise TpmError(TPM_RC.SIZE, param=1)
    auth_timeout = struct.unpack(">Q", timeout)[0]
    expires_on_reset = bool(auth_timeout & EXPIRATION_BIT)
    auth_timeout &= ~EXPIRATION_BIT
    _parameter_checks(tpm, session, auth_timeout, cp_hash_a, b"", 0, 2, 1)
    expected = _auth_ticket(tpm, ticket.tag, ticket.hierarchy, auth_timeout, expires_on_reset,
                            cp_hash_a, policy_ref, auth_name)
    if not hmac.compare_digest(bytes(ticket.digest), expected.digest):
        raise TpmError(TPM_RC.TICKET, param=5)
    code = TPM_CC.PolicySigned if ticket.tag == TPM_ST.AUTH_SIGNED else TPM_CC.PolicySecret
    _context_update(session, code, auth_name, policy_ref, cp_hash_a, auth_timeout)


def policy_authorize(tpm, ctx, policy_session, approved_policy, policy_ref, key_sign,
                     check_ticket):
    """Part 3 §23.16: the policy so far was approved by the key named `key_sign`
    (checkTicket: VerifySignature over aHash = H(approvedPolicy || policyRef)); the digest
    starts over as H(0...0 || TPM_CC_PolicyAuthorize || keySign) and then policyRef."""
    session = _session(tpm, policy_session)
    # (a keySign shorter than a hash algorithm ID: HASH as libtpms/swtpm; newer reference SIZE)
    alg = struct.unpack(">H", key_sign[:2])[0] if len(key_sign) >= 2 else TPM_ALG.ERROR
    if alg not in HASH_SIZES:
        raise TpmError(TPM_RC.HASH, param=3)
    if HASH_SIZES[alg] != len(key_sign) - 2:
        raise TpmError(TPM_RC.SIZE, param=3)
    if not _is_trial(session):
        if session.policy_digest != approved_policy:
            raise TpmError(TPM_RC.VALUE, param=1)
        a_hash = hashes.digest(alg, approved_policy + policy_ref)
        expected = verified_ticket(tpm, check_ticket.hierarchy, a_hash, key_sign)
        if not hmac.compare_digest(bytes(check_ticket.digest), expected.digest):
            raise TpmError(TPM_RC.VALUE, param=4)
    session.policy_digest = b"\0" * session.digest_size
    _context_update(session, TPM_CC.PolicyAuthorize, key_sign, policy_ref, b"", 0)


def policy_locality(tpm, ctx, policy_session, locality):
    """Part 3 §23.8: the command must come from one of these localities (bits 0-4) or
    from this extended locality (32-255); successive assertions narrow the set."""
    session = _session(tpm, policy_session)
    if locality == 0:
        raise TpmError(TPM_RC.RANGE, param=1)
    prev = session.command_locality
    if prev != 0 and (prev < 32) != (locality < 32):
        raise TpmError(TPM_RC.RANGE, param=1)
    if locality < 32:
        new = (prev or 0x1F) & locality
        if new == 0:
            raise TpmError(TPM_RC.RANGE, param=1)
    else:
        if prev != 0 and prev != locality:
            raise TpmError(TPM_RC.RANGE, param=1)
        new = locality
    _extend(session, _CC.pack(TPM_CC.PolicyLocality), bytes((locality,)))
    session.command_locality = new


def time_info(state) -> bytes:
    """TPMS_TIME_INFO marshaled (TimeGetMarshaled): time, clock, resetCount, restartCount,
    safe."""
    return struct.pack(">QQIIB", state.time(), state.clock(), state.nv["reset_count"],
                       state.restart_count, int(state.safe))


def _check_condition(operation, a: bytes, b: bytes) -> bool:
    """PolicySptCheckCondition: operandA (the TPM's bytes) against operandB, big-endian."""
    if operation == 0xA:                      # TPM_EO_BITSET
        return all(x & y == y for x, y in zip(a, b))
    if operation == 0xB:                      # TPM_EO_BITCLEAR
        return all(x & y == 0 for x, y in zip(a, b))
    signed = operation in (2, 4, 6, 8)
    ia = int.from_bytes(a, "big", signed=signed)
    ib = int.from_bytes(b, "big", signed=signed)
    return {0: ia == ib, 1: ia != ib, 2: ia > ib, 3: ia > ib, 4: ia < ib, 5: ia < ib,
            6: ia >= ib, 7: ia >= ib, 8: ia <= ib, 9: ia <= ib}[operation]


def policy_counter_timer(tpm, ctx, policy_session, operand_b, offset, operation):
    """Part 3 §23.10: a comparison with the bytes of TPMS_TIME_INFO at `offset`; the digest
    takes H(operandB || offset || operation)."""
    info = time_info(tpm.state)
    if offset > len(info):
        raise TpmError(TPM_RC.VALUE, param=2)
    if offset + len(operand_b) > len(info):
        raise TpmError(TPM_RC.RANGE)
    session = _session(tpm, policy_session)
    if not _is_trial(session):
        if not _check_condition(operation, info[offset:offset + len(operand_b)], operand_b):
            raise TpmError(TPM_RC.POLICY)
    arg = hashes.digest(session.auth_hash, operand_b + struct.pack(">HH", offset, operation))
    _extend(session, _CC.pack(TPM_CC.PolicyCounterTimer), arg)


# -- policies on NV indices (Part 3 §23.9, §23.20, §23.22) ----------------------------------

def _readable_index(tpm, auth_handle, nv_index):
    """The index a real session's PolicyNV/PolicyAuthorizeNV reads: authHandle may read it,
    it is not read locked and it has been written (NvReadAccessChecks)."""
    index = nv_indices.get(tpm.state, nv_index)
    rc = nv_indices.read_refusal(auth_handle, index)
    if rc is not None:
        raise TpmError(rc)
    return index


def policy_nv(tpm, ctx, auth_handle, nv_index, policy_session, operand_b, offset, operation):
    """Part 3 §23.9: a comparison with the index's data at `offset` (authHandle authorized
    reading it); the digest takes H(operandB || offset || operation) and the index's Name,
    which is the Name it has now (written). A trial session does not look at the index."""
    session = _session(tpm, policy_session)
    if not _is_trial(session):
        index = _readable_index(tpm, auth_handle, nv_index)
        size = index.public.dataSize
        if offset > size:
            raise TpmError(TPM_RC.VALUE, param=2)
        if size - offset < len(operand_b):
            raise TpmError(TPM_RC.SIZE, param=1)
        if not _check_condition(operation, index.data[offset:offset + len(operand_b)],
                                operand_b):
            raise TpmError(TPM_RC.POLICY)
    arg = hashes.digest(session.auth_hash, operand_b + struct.pack(">HH", offset, operation))
    _extend(session, _CC.pack(TPM_CC.PolicyNV), arg, tpm.entity_name(nv_index))


def policy_authorize_nv(tpm, ctx, auth_handle, nv_index, policy_session):
    """Part 3 §23.22: the policy so far is the one the index holds (a TPMT_HA of the
    session's hash algorithm), so whoever may write the index decides the policy; the digest
    starts over as H(0...0 || TPM_CC_PolicyAuthorizeNV || nvIndex Name)."""
    session = _session(tpm, policy_session)
    if not _is_trial(session):
        index = _readable_index(tpm, auth_handle, nv_index)
        data = index.data[:2 + MAX_DIGEST_SIZE]     # MIN(dataSize, sizeof(TPMT_HA))
        # TPMT_HA_Unmarshal, its errors as they are
        if len(data) < 2:
            raise TpmError(TPM_RC.INSUFFICIENT)
        alg = struct.unpack_from(">H", data)[0]
        if alg not in HASH_SIZES:
            raise TpmError(TPM_RC.HASH)
        if len(data) < 2 + HASH_SIZES[alg]:
            raise TpmError(TPM_RC.INSUFFICIENT)
        if alg != session.auth_hash:
            raise TpmError(TPM_RC.HASH)
        if not hmac.compare_digest(data[2:2 + HASH_SIZES[alg]], session.policy_digest):
            raise TpmError(TPM_RC.VALUE)
    session.policy_digest = b"\0" * session.digest_size
    _context_update(session, TPM_CC.PolicyAuthorizeNV, tpm.entity_name(nv_index), None, b"", 0)


def policy_nv_written(tpm, ctx, policy_session, written_set):
    """Part 3 §23.20: the authorized entity must be an NV index whose TPMA_NV_WRITTEN is
    `written_set` (checked when the session is used); a contrary second assertion fails."""
    session = _session(tpm, policy_session)
    if session.check_nv_written and session.nv_written_state != bool(written_set):
        raise TpmError(TPM_RC.VALUE, param=1)
    session.check_nv_written = True
    session.nv_written_state = bool(written_set)
    _extend(session, _CC.pack(TPM_CC.PolicyNvWritten), bytes((written_set,)))


def policy_template(tpm, ctx, policy_session, template_hash):
    """Part 3 §23.21: Create, CreatePrimary or CreateLoaded with a template (inPublic) of
    this digest."""
    session = _session(tpm, policy_session)
    # (as libtpms/swtpm: another templateHash is VALUE; the newer reference says CPHASH)
    if session.is_template_hash:
        if template_hash != session.cp_hash:
            raise TpmError(TPM_RC.VALUE, param=1)
    elif _cp_hash_occupied(session):
        raise TpmError(TPM_RC.CPHASH)
    if len(template_hash) != session.digest_size:
        raise TpmError(TPM_RC.SIZE, param=1)
    _extend(session, _CC.pack(TPM_CC.PolicyTemplate), template_hash)
    session.cp_hash = template_hash
    session.is_template_hash = True


def policy_physical_presence(tpm, ctx, policy_session):
    """Part 3 §23.12: physical presence must be asserted when the session is used."""
    session = _session(tpm, policy_session)
    _extend(session, _CC.pack(TPM_CC.PolicyPhysicalPresence))
    session.is_pp_required = True


def policy_duplication_select(tpm, ctx, policy_session, object_name, new_parent_name,
                              include_object):
    """Part 3 §23.15: Duplicate only of this object (optionally) to this new parent."""
    session = _session(tpm, policy_session)
    if _cp_hash_occupied(session):
        raise TpmError(TPM_RC.CPHASH)
    if session.command_code != 0:
        raise TpmError(TPM_RC.COMMAND_CODE)
    alg = session.auth_hash
    session.cp_hash = hashes.digest(alg, object_name + new_parent_name)
    session.is_name_hash = True
    _extend(session, _CC.pack(TPM_CC.PolicyDuplicationSelect),
            object_name if include_object else b"", new_parent_name, bytes((include_object,)))
    session.command_code = TPM_CC.Duplicate


def policy_name_hash(tpm, ctx, policy_session, name_hash):
    """Part 3 §23.14: the digest of the Names of the command's handles."""
    session = _session(tpm, policy_session)
    if len(name_hash) != session.digest_size:
        raise TpmError(TPM_RC.SIZE, param=1)
    if _cp_hash_occupied(session):
        raise TpmError(TPM_RC.CPHASH)
    _extend(session, _CC.pack(TPM_CC.PolicyNameHash), name_hash)
    session.cp_hash = name_hash
    session.is_name_hash = True


def policy_cp_hash(tpm, ctx, policy_session, cp_hash_a):
    """Part 3 §23.13: the command's cpHash."""
    session = _session(tpm, policy_session)
    if len(cp_hash_a) != session.digest_size:
        raise TpmError(TPM_RC.SIZE, param=1)
    if _cp_hash_occupied(session) and (not session.is_cp_hash
                                        or cp_hash_a != session.cp_hash):
        raise TpmError(TPM_RC.CPHASH)
    _extend(session, _CC.pack(TPM_CC.PolicyCpHash), cp_hash_a)
    session.cp_hash = cp_hash_a
    session.is_cp_hash = True


def policy_pcr(tpm, ctx, policy_session, pcr_digest, pcrs):
    """Part 3 §23.7: the selected PCRs have (and keep) the values they have now."""
    session = _session(tpm, policy_session)
    state = tpm.state
    pcrs, values = filter_selection(state, pcrs)
    digest = hashes.digest(session.auth_hash, b"".join(values))
    if not _is_trial(session):
        if session.pcr_counter != 0 and session.pcr_counter != state.pcr_counter:
            raise TpmError(TPM_RC.PCR_CHANGED)
        if pcr_digest and pcr_digest != digest:
            raise TpmError(TPM_RC.VALUE, param=1)
    elif pcr_digest:
        digest = pcr_digest
    _extend(session, _CC.pack(TPM_CC.PolicyPCR), TPML_PCR_SELECTION.build(pcrs), digest)
    if not _is_trial(session):
        session.pcr_counter = state.pcr_counter


def policy_or(tpm, ctx, policy_session, p_hash_list):
    """Part 3 §23.6: the policy so far is one of the branches; the digest becomes
    H(0...0 || TPM_CC_PolicyOR || digests)."""
    session = _session(tpm, policy_session)
    if not _is_trial(session) and session.policy_digest not in p_hash_list:
        raise TpmError(TPM_RC.VALUE, param=1)
    session.policy_digest = b"\0" * session.digest_size
    _extend(session, _CC.pack(TPM_CC.PolicyOR), *(bytes(d) for d in p_hash_list))


# -- authorization with a policy session (Part 1 §19.7.1, CheckPolicyAuthSession) ----------

def auth_policy(tpm, handle):
    """(authPolicy, its hash algorithm) of an entity, or None if a policy cannot authorize
    it (IsAuthPolicyAvailable): objects loaded with their private part (not sequences);
    hierarchies once SetPrimaryPolicy gave them one; NV indices their authPolicy (whether
    the role may use it, POLICYREAD/POLICYWRITE, is checked in check_policy_session); PCRs
    of the policy group the policy PCR_SetAuthPolicy gave them (PCRGetAuthPolicy)."""
    if handle >> 24 == TPM_HT.PERMANENT:
        alg, policy = hierarchy_policy(tpm.state, handle)
        return (policy, alg) if policy else None
    if handle >> 24 == TPM_HT.PCR:
        if handle not in PCR_POLICY_GROUP:
            return None
        alg, policy = tpm.state.pcr_policy()
        return policy, alg
    if handle >> 24 == TPM_HT.NV_INDEX:
        index = nv_indices.get(tpm.state, handle)
        if index is None:
            return None
        return bytes(index.public.authPolicy), index.public.nameAlg
    if handle >> 24 not in (TPM_HT.TRANSIENT, TPM_HT.PERSISTENT):
        return None
    obj = tpm._object(handle)
    if obj is None or obj.sensitive is None or obj.public.type == TPM_ALG.NULL:
        return None
    return bytes(obj.public.authPolicy), obj.public.nameAlg


def _template_hash(session, code, params: bytes) -> bytes | None:
    """CompareTemplateHash's digest: H(inPublic) of Create, CreatePrimary, CreateLoaded
    (the second parameter, after the TPM2B inSensitive), None if not such a command."""
    if code not in (TPM_CC.Create, TPM_CC.CreatePrimary, TPM_CC.CreateLoaded):
        return None
    if len(params) < 2:
        return None
    at = 2 + struct.unpack_from(">H", params)[0]
    if len(params) < at + 2:
        return None
    size = struct.unpack_from(">H", params, at)[0]
    if size > len(params) - at - 2:
        return None
    return hashes.digest(session.auth_hash, params[at + 2:at + 2 + size])


def _locality_ok(allowed: int, locality: int) -> bool:
    if locality < 5:
        return allowed < 32 and bool(allowed & (1 << locality))
    if locality > 31:
        return allowed == locality
    return False


def check_policy_session(tpm, code, session, entity, role, cp_hash, names, locality=0,
                         params=b""):
    """The conditions of a policy session that authorizes `entity` in `role` for command
    `code` sent from `locality` with parameter area `params`. `cp_hash(alg)` gives the
    command's cpHash, `names` the handles' Names.
    Raises TpmError (format-one codes without their session number)."""
    policy = auth_policy(tpm, entity)
    if policy is None:
        raise TpmError(TPM_RC.AUTH_UNAVAILABLE)
    if entity >> 24 == TPM_HT.NV_INDEX:     # POLICYREAD / POLICYWRITE (ADMIN: always)
        if not nv_indices.policy_available(nv_indices.get(tpm.state, entity), role == Auth.ADMIN, code):
            raise TpmError(TPM_RC.AUTH_UNAVAILABLE)
    if (code == TPM_CC.PolicySecret and not session.is_password_needed
            and not session.is_auth_value_needed):
        raise TpmError(TPM_RC.MODE)
    if session.pcr_counter != 0 and session.pcr_counter != tpm.state.pcr_counter:
        raise TpmError(TPM_RC.PCR_CHANGED)
    auth_policy_, alg = policy
    if session.policy_digest != auth_policy_ or alg != session.auth_hash:
        raise TpmError(TPM_RC.POLICY_FAIL)
    if session.timeout != 0 and session.timeout < tpm.state.time():
        raise TpmError(TPM_RC.EXPIRED)
    if session.command_code != 0:
        if session.command_code != code:
            raise TpmError(TPM_RC.POLICY_CC)
    elif role in (Auth.ADMIN, Auth.DUP):
        raise TpmError(TPM_RC.POLICY_FAIL)
    if session.command_locality and not _locality_ok(session.command_locality, locality):
        raise TpmError(TPM_RC.LOCALITY)
    if session.is_pp_required and not tpm.physical_presence:
        raise TpmError(TPM_RC.PP)
    if session.cp_hash:
        if session.is_cp_hash:
            ok = session.cp_hash == cp_hash(session.auth_hash)
        elif session.is_template_hash:
            ok = session.cp_hash == _template_hash(session, code, params)
        elif session.is_parameters_hash:      # PolicyParameters: H(commandCode || parameters)
            ok = session.cp_hash == hashes.digest(session.auth_hash, _CC.pack(code) + params)
        else:
            ok = session.cp_hash == hashes.digest(session.auth_hash, b"".join(names))
        if not ok:
            raise TpmError(TPM_RC.POLICY_FAIL)
    if session.check_nv_written:        # PolicyNvWritten: only an index, written or not
        index = nv_indices.get(tpm.state, entity) if entity >> 24 == TPM_HT.NV_INDEX else None
        if index is None or bool(index.attributes & nv_indices.A.WRITTEN) != session.nv_written_state:
            raise TpmError(TPM_RC.POLICY_FAIL)


# -- Library rev 1.83: PolicyCapability, PolicyParameters --------------------------------------

def policy_capability(tpm, ctx, policy_session, operand_b, offset, operation, capability,
                      prop):
    """Part 3 §23.23 (rev 1.83): a comparison with the marshaled capability data of one
    property, as GetCapability(capability, property, 1) reports it (a property the TPM does
    not have satisfies only TPM_EO_NEQ); the digest takes
    H(operandB || offset || operation || capability || property)."""
    session = _session(tpm, policy_session)
    if not _is_trial(session):
        data = one_property(tpm, capability, prop)
        if data is None:
            if operation != 1:                          # TPM_EO_NEQ
                raise TpmError(TPM_RC.POLICY)
        else:
            if offset > len(data):
                raise TpmError(TPM_RC.VALUE, param=2)
            if len(data) - offset < len(operand_b):
                raise TpmError(TPM_RC.SIZE, param=1)
            if not _check_condition(operation, data[offset:offset + len(operand_b)],
                                    operand_b):
                raise TpmError(TPM_RC.POLICY)
    arg = hashes.digest(session.auth_hash, operand_b + struct.pack(">HHII", offset, operation,
                                                                     capability, prop))
    _extend(session, _CC.pack(TPM_CC.PolicyCapability), arg)


def policy_parameters(tpm, ctx, policy_session, p_hash):
    """Part 3 §23.24 (rev 1.83): bind the policy to the authorized command's parameters,
    pHash = H(commandCode || parameters) - like PolicyCpHash without the handles' Names."""
    session = _session(tpm, policy_session)
    if len(p_hash) != session.digest_size:
        raise TpmError(TPM_RC.SIZE, param=1)
    if _cp_hash_occupied(session):
        raise TpmError(TPM_RC.CPHASH)
    _extend(session, _CC.pack(TPM_CC.PolicyParameters), p_hash)
    session.cp_hash = p_hash
    session.is_parameters_hash = True
