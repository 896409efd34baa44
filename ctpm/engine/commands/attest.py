"""Part 3 §18: attestation (Certify, CertifyCreation, Quote, GetSessionAuditDigest,
GetCommandAuditDigest, GetTime), and NV_Certify (Part 3 §31.16), which is built the same way.

Every command fills the TPMS_ATTEST header as the reference's FillInAttestInfo does: the
signer's qualified Name (TPM_RH_NULL's handle for no key, empty for an anonymous ECDAA
signature), extraData, clockInfo and firmwareVersion; for a key outside the endorsement and
platform hierarchies (and for no key) resetCount, restartCount and firmwareVersion are
obfuscated with KDFa(shProof, "OBFUSCATE", qualifiedSigner), so that quotes by different
storage keys cannot be linked by those counters. The digest signed is H(TPMS_ATTEST), or
H(qualifyingData || H(TPMS_ATTEST)) for an anonymous scheme, which keeps extraData out of the
structure. CertifyX509 lives in engine/commands/x509.py.
"""
import hmac

from construct import Container

from ...crypto import hashes
from ...crypto.kdf import kdfa
from ...errors import TpmError
from ...wire.attest import TPM_GENERATED_VALUE, TPM_ST_ATTEST_NV_DIGEST, TPMS_ATTEST
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH, TPM_ST, TPMA_OBJECT as OA
from ...wire.structures import HASH_SIZES
from ..subsystems import nv_indices
from ..subsystems import audit, keyuse
from ..subsystems.audit import DEFAULT_AUDIT_HASH
from ..subsystems.clock import clock_info
from ..subsystems.create import creation_ticket
from ..subsystems.pcr_banks import filter_selection
from .signature import select_sign_scheme, sign_digest

_NULL_SCHEME = Container(scheme=TPM_ALG.NULL, details=Container(hashAlg=TPM_ALG.NULL))
_NULL_SIGNATURE = Container(sigAlg=TPM_ALG.NULL, signature=Container())
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def signing_key(tpm, sign_handle, in_scheme, handle: int, param: int):
    """IsSigningObject and CryptSelectSignScheme: the key (None for TPM_RH_NULL) and the
    scheme it signs with. TPM_RC_KEY names the sign handle, TPM_RC_SCHEME the inScheme
    parameter."""
    if sign_handle == TPM_RH.NULL:
        return None, _NULL_SCHEME
    obj = tpm.state.object(sign_handle)
    if not obj.attributes & OA.SIGN_ENCRYPT or obj.public.type == TPM_ALG.SYMCIPHER:
        raise TpmError(TPM_RC.KEY, handle=handle)
    scheme = select_sign_scheme(obj.public, in_scheme)
    if scheme is None:
        raise TpmError(TPM_RC.SCHEME, param=param)
    keyuse.require_private(obj)
    return obj, scheme


def _anonymous(scheme) -> bool:
    return scheme.scheme == TPM_ALG.ECDAA


def firmware_version(tpm) -> int:
    major, minor = tpm.config.firmware_version
    return (major << 32) | minor


def header(tpm, obj, scheme, qualifying_data: bytes, kind: int):
    """FillInAttestInfo: the TPMS_ATTEST fields common to every attestation."""
    state = tpm.state
    if obj is None:
        signer = int(TPM_RH.NULL).to_bytes(4, "big")
    elif _anonymous(scheme):
        signer = b""
    else:
        signer = obj.qualified_name
    clock = clock_info(state)
    fw = firmware_version(tpm)
    if obj is None or obj.hierarchy not in (TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM):
        # The reference reads the 16 KDF bytes as two host-order UINT64s; libtpms runs on
        # little-endian machines, so ctpm reads them little-endian too.
        mask = kdfa(DEFAULT_AUDIT_HASH, state.proof(TPM_RH.OWNER), b"OBFUSCATE", signer, b"",
                    128)
        o0 = int.from_bytes(mask[:8], "little")
        o1 = int.from_bytes(mask[8:], "little")
        fw = (fw + o0) & _U64
        clock.resetCount = (clock.resetCount + (o1 >> 32)) & _U32
        clock.restartCount = (clock.restartCount + o1) & _U32
    return Container(magic=TPM_GENERATED_VALUE, type=kind, qualifiedSigner=signer,
                     extraData=b"" if _anonymous(scheme) else bytes(qualifying_data),
                     clockInfo=clock, firmwareVersion=fw)


def sign_attest(tpm, obj, scheme, attest, qualifying_data: bytes):
    """SignAttestInfo: the marshaled TPMS_ATTEST and its signature (TPM_ALG_NULL without a
    key). A signature reports the clock, so the state is no longer orderly."""
    blob = TPMS_ATTEST.build(attest)
    if obj is None:
        return blob, _NULL_SIGNATURE
    alg = scheme.details.hashAlg
    digest = hashes.digest(alg, blob)
    if _anonymous(scheme) and qualifying_data:
        digest = hashes.digest(alg, bytes(qualifying_data) + digest)
    signature = sign_digest(tpm, obj, scheme, digest)
    tpm.state.clear_orderly()
    return blob, signature


def _attest(tpm, obj, scheme, qualifying_data, kind, attested):
    info = header(tpm, obj, scheme, qualifying_data, kind)
    info.attested = attested
    return sign_attest(tpm, obj, scheme, info, qualifying_data)


# -- the commands -----------------------------------------------------------------------------

def certify(tpm, ctx, object_handle, sign_handle, qualifying_data, in_scheme):
    """Part 3 §18.2: the signer vouches that an object with this Name is loaded."""
    obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=2, param=2)
    certified = tpm.state.object(object_handle)
    qn = b"" if _anonymous(scheme) else certified.qualified_name
    return _attest(tpm, obj, scheme, qualifying_data, TPM_ST.ATTEST_CERTIFY,
                   Container(name=certified.name, qualifiedName=qn))


def certify_creation(tpm, ctx, sign_handle, object_handle, qualifying_data, creation_hash,
                     in_scheme, creation_ticket_in):
    """Part 3 §18.3: the object was created by this TPM with this creation data (the
    creation ticket proves it)."""
    obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=1, param=3)
    certified = tpm.state.object(object_handle)
    expected = creation_ticket(tpm, creation_ticket_in.hierarchy, certified.name,
                               bytes(creation_hash))
    if not hmac.compare_digest(expected.digest, bytes(creation_ticket_in.digest)):
        raise TpmError(TPM_RC.TICKET, param=4)
    return _attest(tpm, obj, scheme, qualifying_data, TPM_ST.ATTEST_CREATION,
                   Container(objectName=certified.name, creationHash=creation_hash))


def quote(tpm, ctx, sign_handle, qualifying_data, in_scheme, pcr_select):
    """Part 3 §18.4: a signed digest of the selected PCRs, hashed with the scheme's hash
    (so TPM_RH_NULL, whose scheme has none, cannot quote)."""
    obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=1, param=2)
    alg = scheme.details.hashAlg
    if alg == TPM_ALG.NULL:
        raise TpmError(TPM_RC.SCHEME, param=2)
    selection, values = filter_selection(tpm.state, pcr_select)
    return _attest(tpm, obj, scheme, qualifying_data, TPM_ST.ATTEST_QUOTE,
                   Container(pcrSelect=selection,
                             pcrDigest=hashes.digest(alg, b"".join(values))))


def get_session_audit_digest(tpm, ctx, privacy_handle, sign_handle, session_handle,
                             qualifying_data, in_scheme):
    """Part 3 §18.5: an audit session's digest, and whether it is the exclusive one."""
    obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=2, param=2)
    session = tpm.state.sessions[session_handle]
    if not session.is_audit:
        raise TpmError(TPM_RC.TYPE, handle=3)
    exclusive = tpm.state.exclusive_audit_session == session_handle
    return _attest(tpm, obj, scheme, qualifying_data, TPM_ST.ATTEST_SESSION_AUDIT,
                   Container(exclusiveSession=int(exclusive),
                             sessionDigest=session.audit_digest))


def command_digest(state) -> bytes:
    """CommandAuditGetDigest: H(each audited command code, ascending, as a UINT32)."""
    alg = audit.audit_hash_alg(state)
    codes = sorted(audit.audit_commands(state))
    return hashes.digest(alg, b"".join(c.to_bytes(4, "big") for c in codes))


def get_command_audit_digest(tpm, ctx, privacy_handle, sign_handle, qualifying_data,
                             in_scheme):
    """Part 3 §18.6: the command audit digest, counter and list; a signed report starts
    the digest over."""
    obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=2, param=2)
    state = tpm.state
    result = _attest(tpm, obj, scheme, qualifying_data, TPM_ST.ATTEST_COMMAND_AUDIT,
                     Container(auditCounter=audit.audit_counter(state),
                               digestAlg=audit.audit_hash_alg(state),
                               auditDigest=state.command_audit_digest or b"",
                               commandDigest=command_digest(state)))
    if obj is not None:
        state.command_audit_digest = b""
    return result


def get_time(tpm, ctx, privacy_handle, sign_handle, qualifying_data, in_scheme):
    """Part 3 §18.7: Time and Clock, signed; the inner clockInfo and firmwareVersion are
    never obfuscated (the endorsement hierarchy authorized the disclosure)."""
    obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=2, param=2)
    state = tpm.state
    attested = Container(time=Container(time=state.time(), clockInfo=clock_info(state)),
                         firmwareVersion=firmware_version(tpm))
    return _attest(tpm, obj, scheme, qualifying_data, TPM_ST.ATTEST_TIME, attested)


def nv_certify(tpm, ctx, sign_handle, auth_handle, nv_index, qualifying_data, in_scheme,
               size, offset):
    """Part 3 §31.16: certify an NV index's contents (size and offset both 0: a digest of
    the whole index, TPM_ST_ATTEST_NV_DIGEST), with the index's read rules."""
    obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=1, param=2)
    index = nv_indices.get(tpm.state, nv_index)
    rc = nv_indices.read_refusal(auth_handle, index)
    if rc is not None:
        raise TpmError(rc)
    data_size = index.public.dataSize
    if size + offset > data_size:
        raise TpmError(TPM_RC.NV_RANGE)
    if size > tpm.config.nv_buffer_max:
        raise TpmError(TPM_RC.VALUE, param=3)
    name = index.name
    data = index.data
    if size or offset:
        return _attest(tpm, obj, scheme, qualifying_data, TPM_ST.ATTEST_NV,
                       Container(indexName=name, offset=offset,
                                 nvContents=data[offset:offset + size]))
    alg = scheme.details.hashAlg
    digest = hashes.digest(alg, data[:data_size]) if alg in HASH_SIZES else b""
    return _attest(tpm, obj, scheme, qualifying_data, TPM_ST_ATTEST_NV_DIGEST,
                   Container(indexName=name, nvDigest=digest))
