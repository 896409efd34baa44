"""The command table: every implemented command declared once, with its Part 3 section.

For each command: its handles (with the authorization role Part 3 gives, and the handle
type's interface for unmarshaling), its parameters and response parameters in wire order,
and the TPMA_CC attributes GetCapability(COMMANDS) reports. The dispatcher does all the
unmarshaling, session and response work from this table; handlers see Python values.
"""
from dataclasses import dataclass
from enum import IntEnum

from . import attest as A
from . import nv as N
from . import objects as O
from . import structures as S
from .base import Int, Sized, Tpm2b
from .constants import TPM_CC, TPM_RC, TPM_RH, TPMA_CC


_TPM2B_TYPES = (Tpm2b, Sized)


class Auth(IntEnum):
    """Authorization role of a handle (Part 3 "Auth Index" / "Auth Role")."""
    NONE = 0
    USER = 1
    ADMIN = 2
    DUP = 3


@dataclass(frozen=True)
class Handle:
    name: str
    type: object            # construct that unmarshals and range-checks the handle
    auth: Auth = Auth.NONE


@dataclass(frozen=True)
class Command:
    code: TPM_CC
    spec: str               # "Part 3 §x.y"
    handles: tuple = ()
    params: tuple = ()      # ((name, construct), ...)
    response: tuple = ()    # ((name, construct), ...) after the optional response handle
    response_handle: bool = False
    nv: bool = False        # TPMA_CC.nv: may write NV
    extensive: bool = False
    flushed: bool = False
    pp: bool = False        # PP_Commands may require physical presence for it (the reference's
                            # PP_COMMAND attribute: platformAuth may authorize it)
    sessions: bool = True   # False: the tag must be TPM_ST_NO_SESSIONS (else TPM_RC_AUTH_CONTEXT)

    @property
    def attributes(self) -> int:
        """TPMA_CC for GetCapability(TPM_CAP_COMMANDS) (Part 2 §8.9)."""
        a = int(self.code) & 0xFFFF
        a |= len(self.handles) << 25
        if self.nv:
            a |= TPMA_CC.NV
        if self.extensive:
            a |= TPMA_CC.EXTENSIVE
        if self.flushed:
            a |= TPMA_CC.FLUSHED
        if self.response_handle:
            a |= TPMA_CC.RHANDLE
        return a

    @property
    def auth_handles(self) -> int:
        return sum(1 for h in self.handles if h.auth != Auth.NONE)

    @property
    def decrypt(self) -> bool:
        """May the first command parameter be encrypted (it is a TPM2B)?"""
        return bool(self.params) and isinstance(self.params[0][1], _TPM2B_TYPES)

    @property
    def encrypt(self) -> bool:
        """May the first response parameter be encrypted (it is a TPM2B)?"""
        return bool(self.response) and isinstance(self.response[0][1], _TPM2B_TYPES)


PCR = S.TPMI_DH_PCR
PCR_OR_NULL = S.TPMI_DH_PCR.plus
# TPMI_RH_LOCKOUT (Part 2 §9.21): only TPM_RH_LOCKOUT
LOCKOUT = Int(4, frozenset((TPM_RH.LOCKOUT,)), TPM_RC.VALUE)
# TPM_CLOCK_ADJUST (Part 2 §6.6): an INT8, COARSE_SLOWER (-3) to COARSE_FASTER (3), read here
# as its unsigned byte
CLOCK_ADJUST = Int(1, frozenset((0xFD, 0xFE, 0xFF, 0, 1, 2, 3)), TPM_RC.VALUE)

COMMANDS = (
    # Part 3 §9: start-up
    Command(TPM_CC.Startup, "Part 3 §9.3",
            params=(("startupType", S.TPM_SU_),), nv=True, sessions=False),
    Command(TPM_CC.Shutdown, "Part 3 §9.4",
            params=(("shutdownType", S.TPM_SU_),), nv=True),
    # Part 3 §10: testing
    Command(TPM_CC.SelfTest, "Part 3 §10.2",
            params=(("fullTest", S.TPMI_YES_NO),), nv=True),
    Command(TPM_CC.IncrementalSelfTest, "Part 3 §10.3",
            params=(("toTest", S.TPML_ALG),),
            response=(("toDoList", S.TPML_ALG),), nv=True),
    Command(TPM_CC.GetTestResult, "Part 3 §10.4",
            response=(("outData", S.TPM2B_MAX_BUFFER), ("testResult", S.TPM_RC_))),
    # Part 3 §16: random number generator
    Command(TPM_CC.GetRandom, "Part 3 §16.1",
            params=(("bytesRequested", S.UINT16),),
            response=(("randomBytes", S.TPM2B_DIGEST),)),
    Command(TPM_CC.StirRandom, "Part 3 §16.2",
            params=(("inData", S.Tpm2b(S.MAX_SYM_DATA)),), nv=True),
    # Part 3 §11: session commands
    Command(TPM_CC.StartAuthSession, "Part 3 §11.1",
            handles=(Handle("tpmKey", S.TPMI_DH_OBJECT.plus), Handle("bind", S.TPMI_DH_ENTITY.plus)),
            params=(("nonceCaller", S.TPM2B_NONCE), ("encryptedSalt", S.TPM2B_ENCRYPTED_SECRET),
                    ("sessionType", S.TPM_SE_), ("symmetric", S.TPMT_SYM_DEF),
                    ("authHash", S.TPMI_ALG_HASH)),
            response=(("nonceTPM", S.TPM2B_NONCE),), response_handle=True),
    # Part 3 §12: object commands
    Command(TPM_CC.Create, "Part 3 §12.1",
            handles=(Handle("parentHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("inSensitive", O.TPM2B_SENSITIVE_CREATE), ("inPublic", O.TPM2B_PUBLIC),
                    ("outsideInfo", S.TPM2B_DATA), ("creationPCR", S.TPML_PCR_SELECTION)),
            response=(("outPrivate", O.TPM2B_PRIVATE), ("outPublic", O.TPM2B_PUBLIC),
                      ("creationData", O.TPM2B_CREATION_DATA),
                      ("creationHash", S.TPM2B_DIGEST), ("creationTicket", O.TPMT_TK_CREATION))),
    Command(TPM_CC.Load, "Part 3 §12.2",
            handles=(Handle("parentHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("inPrivate", O.TPM2B_PRIVATE), ("inPublic", O.TPM2B_PUBLIC)),
            response=(("name", S.TPM2B_NAME),), response_handle=True),
    Command(TPM_CC.LoadExternal, "Part 3 §12.3",
            params=(("inPrivate", O.TPM2B_SENSITIVE), ("inPublic", O.TPM2B_PUBLIC_PLUS),
                    ("hierarchy", S.TPMI_RH_HIERARCHY.plus)),
            response=(("name", S.TPM2B_NAME),), response_handle=True),
    Command(TPM_CC.ReadPublic, "Part 3 §12.4",
            handles=(Handle("objectHandle", S.TPMI_DH_OBJECT),),
            response=(("outPublic", O.TPM2B_PUBLIC), ("name", S.TPM2B_NAME),
                      ("qualifiedName", S.TPM2B_NAME))),
    Command(TPM_CC.ObjectChangeAuth, "Part 3 §12.8",
            handles=(Handle("objectHandle", S.TPMI_DH_OBJECT, Auth.ADMIN),
                     Handle("parentHandle", S.TPMI_DH_OBJECT)),
            params=(("newAuth", S.TPM2B_AUTH),),
            response=(("outPrivate", O.TPM2B_PRIVATE),)),
    Command(TPM_CC.CreateLoaded, "Part 3 §12.9",
            handles=(Handle("parentHandle", S.TPMI_DH_PARENT.plus, Auth.USER),),
            params=(("inSensitive", O.TPM2B_SENSITIVE_CREATE), ("inPublic", O.TPM2B_TEMPLATE)),
            response=(("outPrivate", O.TPM2B_PRIVATE), ("outPublic", O.TPM2B_PUBLIC),
                      ("name", S.TPM2B_NAME)), response_handle=True, pp=True),
    Command(TPM_CC.Unseal, "Part 3 §12.7",
            handles=(Handle("itemHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            response=(("outData", O.TPM2B_SENSITIVE_DATA),)),
    Command(TPM_CC.ActivateCredential, "Part 3 §12.5",
            handles=(Handle("activateHandle", S.TPMI_DH_OBJECT, Auth.ADMIN),
                     Handle("keyHandle", S.TPMI_DH_OBJECT, Auth.USER)),
            params=(("credentialBlob", O.TPM2B_ID_OBJECT),
                    ("secret", S.TPM2B_ENCRYPTED_SECRET)),
            response=(("certInfo", S.TPM2B_DIGEST),)),
    Command(TPM_CC.MakeCredential, "Part 3 §12.6",
            handles=(Handle("handle", S.TPMI_DH_OBJECT),),
            params=(("credential", S.TPM2B_DIGEST), ("objectName", S.TPM2B_NAME)),
            response=(("credentialBlob", O.TPM2B_ID_OBJECT),
                      ("secret", S.TPM2B_ENCRYPTED_SECRET))),
    # Part 3 §13: duplication
    Command(TPM_CC.Duplicate, "Part 3 §13.1",
            handles=(Handle("objectHandle", S.TPMI_DH_OBJECT, Auth.DUP),
                     Handle("newParentHandle", S.TPMI_DH_OBJECT.plus)),
            params=(("encryptionKeyIn", S.TPM2B_DATA),
                    ("symmetricAlg", S.TPMT_SYM_DEF_OBJECT)),
            response=(("encryptionKeyOut", S.TPM2B_DATA), ("duplicate", O.TPM2B_PRIVATE),
                      ("outSymSeed", S.TPM2B_ENCRYPTED_SECRET))),
    Command(TPM_CC.Rewrap, "Part 3 §13.2",
            handles=(Handle("oldParent", S.TPMI_DH_OBJECT.plus, Auth.USER),
                     Handle("newParent", S.TPMI_DH_OBJECT.plus)),
            params=(("inDuplicate", O.TPM2B_PRIVATE), ("name", S.TPM2B_NAME),
                    ("inSymSeed", S.TPM2B_ENCRYPTED_SECRET)),
            response=(("outDuplicate", O.TPM2B_PRIVATE),
                      ("outSymSeed", S.TPM2B_ENCRYPTED_SECRET))),
    Command(TPM_CC.Import, "Part 3 §13.3",
            handles=(Handle("parentHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("encryptionKey", S.TPM2B_DATA), ("objectPublic", O.TPM2B_PUBLIC),
                    ("duplicate", O.TPM2B_PRIVATE), ("inSymSeed", S.TPM2B_ENCRYPTED_SECRET),
                    ("symmetricAlg", S.TPMT_SYM_DEF_OBJECT)),
            response=(("outPrivate", O.TPM2B_PRIVATE),)),
    # Part 3 §14: asymmetric primitives
    Command(TPM_CC.RSA_Encrypt, "Part 3 §14.2",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT),),
            params=(("message", O.TPM2B_PUBLIC_KEY_RSA), ("inScheme", O.TPMT_RSA_DECRYPT),
                    ("label", S.TPM2B_DATA)),
            response=(("outData", O.TPM2B_PUBLIC_KEY_RSA),)),
    Command(TPM_CC.RSA_Decrypt, "Part 3 §14.3",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("cipherText", O.TPM2B_PUBLIC_KEY_RSA), ("inScheme", O.TPMT_RSA_DECRYPT),
                    ("label", S.TPM2B_DATA)),
            response=(("message", O.TPM2B_PUBLIC_KEY_RSA),)),
    Command(TPM_CC.ECDH_KeyGen, "Part 3 §14.4",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT),),
            response=(("zPoint", O.TPM2B_ECC_POINT), ("pubPoint", O.TPM2B_ECC_POINT))),
    Command(TPM_CC.ECC_Encrypt, "Part 3 §14.8",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT),),
            params=(("plainText", S.TPM2B_MAX_BUFFER),
                    ("inScheme", S.TPMT_KDF_SCHEME_ECC_CRYPT)),
            response=(("C1", O.TPM2B_ECC_POINT), ("C2", S.TPM2B_MAX_BUFFER),
                      ("C3", S.TPM2B_DIGEST))),
    Command(TPM_CC.ECC_Decrypt, "Part 3 §14.9",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("C1", O.TPM2B_ECC_POINT), ("C2", S.TPM2B_MAX_BUFFER),
                    ("C3", S.TPM2B_DIGEST), ("inScheme", S.TPMT_KDF_SCHEME_ECC_CRYPT)),
            response=(("plainText", S.TPM2B_MAX_BUFFER),)),
    Command(TPM_CC.ECDH_ZGen, "Part 3 §14.5",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("inPoint", O.TPM2B_ECC_POINT),),
            response=(("outPoint", O.TPM2B_ECC_POINT),)),
    Command(TPM_CC.ZGen_2Phase, "Part 3 §14.7",
            handles=(Handle("keyA", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("inQsB", O.TPM2B_ECC_POINT), ("inQeB", O.TPM2B_ECC_POINT),
                    ("inScheme", S.TPMI_ECC_KEY_EXCHANGE), ("counter", S.UINT16)),
            response=(("outZ1", O.TPM2B_ECC_POINT), ("outZ2", O.TPM2B_ECC_POINT))),
    Command(TPM_CC.EC_Ephemeral, "Part 3 §19.3",
            params=(("curveID", S.TPMI_ECC_CURVE),),
            response=(("Q", O.TPM2B_ECC_POINT), ("counter", S.UINT16))),
    Command(TPM_CC.ECC_Parameters, "Part 3 §14.6",
            params=(("curveID", S.TPMI_ECC_CURVE),),
            response=(("parameters", O.TPMS_ALGORITHM_DETAIL_ECC),)),
    # Part 3 §15: symmetric primitives
    Command(TPM_CC.EncryptDecrypt, "Part 3 §15.2",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("decrypt", S.TPMI_YES_NO), ("mode", S.TPMI_ALG_SYM_MODE.plus),
                    ("ivIn", S.TPM2B_IV), ("inData", S.TPM2B_MAX_BUFFER)),
            response=(("outData", S.TPM2B_MAX_BUFFER), ("ivOut", S.TPM2B_IV))),
    Command(TPM_CC.EncryptDecrypt2, "Part 3 §15.3",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("inData", S.TPM2B_MAX_BUFFER), ("decrypt", S.TPMI_YES_NO),
                    ("mode", S.TPMI_ALG_SYM_MODE.plus), ("ivIn", S.TPM2B_IV)),
            response=(("outData", S.TPM2B_MAX_BUFFER), ("ivOut", S.TPM2B_IV))),
    Command(TPM_CC.Hash, "Part 3 §15.4",
            params=(("data", S.TPM2B_MAX_BUFFER), ("hashAlg", S.TPMI_ALG_HASH),
                    ("hierarchy", S.TPMI_RH_HIERARCHY.plus)),
            response=(("outHash", S.TPM2B_DIGEST), ("validation", S.TPMT_TK_HASHCHECK))),
    Command(TPM_CC.HMAC, "Part 3 §15.5",
            handles=(Handle("handle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("buffer", S.TPM2B_MAX_BUFFER), ("hashAlg", S.TPMI_ALG_HASH.plus)),
            response=(("outHMAC", S.TPM2B_DIGEST),)),
    # Part 3 §17: hash/HMAC/event sequences
    Command(TPM_CC.HMAC_Start, "Part 3 §17.2",
            handles=(Handle("handle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("auth", S.TPM2B_AUTH), ("hashAlg", S.TPMI_ALG_HASH.plus)),
            response_handle=True),
    Command(TPM_CC.HashSequenceStart, "Part 3 §17.3",
            params=(("auth", S.TPM2B_AUTH), ("hashAlg", S.TPMI_ALG_HASH.plus)),
            response_handle=True),
    Command(TPM_CC.SequenceUpdate, "Part 3 §17.4",
            handles=(Handle("sequenceHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("buffer", S.TPM2B_MAX_BUFFER),)),
    Command(TPM_CC.SequenceComplete, "Part 3 §17.5",
            handles=(Handle("sequenceHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("buffer", S.TPM2B_MAX_BUFFER), ("hierarchy", S.TPMI_RH_HIERARCHY.plus)),
            response=(("result", S.TPM2B_DIGEST), ("validation", S.TPMT_TK_HASHCHECK)),
            flushed=True),
    Command(TPM_CC.EventSequenceComplete, "Part 3 §17.6",
            handles=(Handle("pcrHandle", S.TPMI_DH_PCR.plus, Auth.USER),
                     Handle("sequenceHandle", S.TPMI_DH_OBJECT, Auth.USER)),
            params=(("buffer", S.TPM2B_MAX_BUFFER),),
            response=(("results", S.TPML_DIGEST_VALUES),), nv=True, flushed=True),
    # Part 3 §19: ephemeral EC keys (the commit phase of ECDAA)
    Command(TPM_CC.Commit, "Part 3 §19.2",
            handles=(Handle("signHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("P1", O.TPM2B_ECC_POINT), ("s2", O.TPM2B_SENSITIVE_DATA),
                    ("y2", O.TPM2B_ECC_PARAMETER)),
            response=(("K", O.TPM2B_ECC_POINT), ("L", O.TPM2B_ECC_POINT),
                      ("E", O.TPM2B_ECC_POINT), ("counter", S.UINT16))),
    # Part 3 §20: signing and signature verification
    Command(TPM_CC.VerifySignature, "Part 3 §20.1",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT),),
            params=(("digest", S.TPM2B_DIGEST), ("signature", O.TPMT_SIGNATURE)),
            response=(("validation", O.TPMT_TK_VERIFIED),)),
    Command(TPM_CC.Sign, "Part 3 §20.2",
            handles=(Handle("keyHandle", S.TPMI_DH_OBJECT, Auth.USER),),
            params=(("digest", S.TPM2B_DIGEST), ("inScheme", O.TPMT_SIG_SCHEME),
                    ("validation", S.TPMT_TK_HASHCHECK)),
            response=(("signature", O.TPMT_SIGNATURE_PLUS),)),
    # Part 3 §18: attestation
    Command(TPM_CC.Certify, "Part 3 §18.2",
            handles=(Handle("objectHandle", S.TPMI_DH_OBJECT, Auth.ADMIN),
                     Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER)),
            params=(("qualifyingData", S.TPM2B_DATA), ("inScheme", O.TPMT_SIG_SCHEME)),
            response=(("certifyInfo", A.TPM2B_ATTEST), ("signature", O.TPMT_SIGNATURE_PLUS))),
    Command(TPM_CC.CertifyCreation, "Part 3 §18.3",
            handles=(Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER),
                     Handle("objectHandle", S.TPMI_DH_OBJECT)),
            params=(("qualifyingData", S.TPM2B_DATA), ("creationHash", S.TPM2B_DIGEST),
                    ("inScheme", O.TPMT_SIG_SCHEME), ("creationTicket", O.TPMT_TK_CREATION)),
            response=(("certifyInfo", A.TPM2B_ATTEST), ("signature", O.TPMT_SIGNATURE_PLUS))),
    Command(TPM_CC.Quote, "Part 3 §18.4",
            handles=(Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER),),
            params=(("qualifyingData", S.TPM2B_DATA), ("inScheme", O.TPMT_SIG_SCHEME),
                    ("PCRselect", S.TPML_PCR_SELECTION)),
            response=(("quoted", A.TPM2B_ATTEST), ("signature", O.TPMT_SIGNATURE_PLUS))),
    Command(TPM_CC.GetSessionAuditDigest, "Part 3 §18.5",
            handles=(Handle("privacyAdminHandle", A.TPMI_RH_ENDORSEMENT, Auth.USER),
                     Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER),
                     Handle("sessionHandle", A.TPMI_SH_HMAC)),
            params=(("qualifyingData", S.TPM2B_DATA), ("inScheme", O.TPMT_SIG_SCHEME)),
            response=(("auditInfo", A.TPM2B_ATTEST), ("signature", O.TPMT_SIGNATURE_PLUS))),
    Command(TPM_CC.GetCommandAuditDigest, "Part 3 §18.6",
            handles=(Handle("privacyHandle", A.TPMI_RH_ENDORSEMENT, Auth.USER),
                     Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER)),
            params=(("qualifyingData", S.TPM2B_DATA), ("inScheme", O.TPMT_SIG_SCHEME)),
            response=(("auditInfo", A.TPM2B_ATTEST), ("signature", O.TPMT_SIGNATURE_PLUS)),
            nv=True),
    Command(TPM_CC.GetTime, "Part 3 §18.7",
            handles=(Handle("privacyAdminHandle", A.TPMI_RH_ENDORSEMENT, Auth.USER),
                     Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER)),
            params=(("qualifyingData", S.TPM2B_DATA), ("inScheme", O.TPMT_SIG_SCHEME)),
            response=(("timeInfo", A.TPM2B_ATTEST), ("signature", O.TPMT_SIGNATURE_PLUS))),
    Command(TPM_CC.CertifyX509, "Part 3 §18.8",
            handles=(Handle("objectHandle", S.TPMI_DH_OBJECT, Auth.ADMIN),
                     Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER)),
            params=(("reserved", S.TPM2B_DATA), ("inScheme", O.TPMT_SIG_SCHEME),
                    ("partialCertificate", S.TPM2B_MAX_BUFFER)),
            response=(("addedToCertificate", S.TPM2B_MAX_BUFFER), ("tbsDigest", S.TPM2B_DIGEST),
                      ("signature", O.TPMT_SIGNATURE))),
    # Part 3 §22: integrity collection (PCR)
    Command(TPM_CC.PCR_Extend, "Part 3 §22.4",
            handles=(Handle("pcrHandle", PCR_OR_NULL, Auth.USER),),
            params=(("digests", S.TPML_DIGEST_VALUES),), nv=True),
    Command(TPM_CC.PCR_Event, "Part 3 §22.5",
            handles=(Handle("pcrHandle", PCR_OR_NULL, Auth.USER),),
            params=(("eventData", S.TPM2B_EVENT),),
            response=(("digests", S.TPML_DIGEST_VALUES),), nv=True),
    Command(TPM_CC.PCR_Read, "Part 3 §22.6",
            params=(("pcrSelectionIn", S.TPML_PCR_SELECTION),),
            response=(("pcrUpdateCounter", S.UINT32), ("pcrSelectionOut", S.TPML_PCR_SELECTION),
                      ("pcrValues", S.TPML_DIGEST))),
    Command(TPM_CC.PCR_Reset, "Part 3 §22.8",
            handles=(Handle("pcrHandle", PCR, Auth.USER),), nv=True),
    Command(TPM_CC.PCR_Allocate, "Part 3 §22.3",
            handles=(Handle("authHandle", S.TPMI_RH_PLATFORM, Auth.USER),),
            params=(("pcrAllocation", S.TPML_PCR_SELECTION),),
            response=(("allocationSuccess", S.TPMI_YES_NO), ("maxPCR", S.UINT32),
                      ("sizeNeeded", S.UINT32), ("sizeAvailable", S.UINT32)), nv=True, pp=True),
    Command(TPM_CC.PCR_SetAuthPolicy, "Part 3 §22.7",
            handles=(Handle("authHandle", S.TPMI_RH_PLATFORM, Auth.USER),),
            params=(("authPolicy", S.TPM2B_DIGEST), ("hashAlg", S.TPMI_ALG_HASH.plus),
                    ("pcrNum", PCR)), nv=True, pp=True),
    Command(TPM_CC.PCR_SetAuthValue, "Part 3 §22.9",
            handles=(Handle("pcrHandle", PCR, Auth.USER),),
            params=(("auth", S.TPM2B_DIGEST),)),
    # Part 3 §23: enhanced authorization (policy) commands (engine/commands/ea.py)
    Command(TPM_CC.PolicySecret, "Part 3 §23.4",
            handles=(Handle("authHandle", S.TPMI_DH_ENTITY, Auth.USER),
                     Handle("policySession", S.TPMI_SH_POLICY)),
            params=(("nonceTPM", S.TPM2B_NONCE), ("cpHashA", S.TPM2B_DIGEST),
                    ("policyRef", S.TPM2B_NONCE), ("expiration", S.INT32)),
            response=(("timeout", S.TPM2B_TIMEOUT), ("policyTicket", O.TPMT_TK_AUTH))),
    Command(TPM_CC.PolicySigned, "Part 3 §23.3",
            handles=(Handle("authObject", S.TPMI_DH_OBJECT),
                     Handle("policySession", S.TPMI_SH_POLICY)),
            params=(("nonceTPM", S.TPM2B_NONCE), ("cpHashA", S.TPM2B_DIGEST),
                    ("policyRef", S.TPM2B_NONCE), ("expiration", S.INT32),
                    ("auth", O.TPMT_SIGNATURE)),
            response=(("timeout", S.TPM2B_TIMEOUT), ("policyTicket", O.TPMT_TK_AUTH))),
    Command(TPM_CC.PolicyTicket, "Part 3 §23.5",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("timeout", S.TPM2B_TIMEOUT), ("cpHashA", S.TPM2B_DIGEST),
                    ("policyRef", S.TPM2B_NONCE), ("authName", S.TPM2B_NAME),
                    ("ticket", O.TPMT_TK_AUTH))),
    Command(TPM_CC.PolicyOR, "Part 3 §23.6",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("pHashList", S.TPML_DIGEST),)),
    Command(TPM_CC.PolicyPCR, "Part 3 §23.7",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("pcrDigest", S.TPM2B_DIGEST), ("pcrs", S.TPML_PCR_SELECTION))),
    Command(TPM_CC.PolicyLocality, "Part 3 §23.8",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("locality", O.TPMA_LOCALITY),)),
    Command(TPM_CC.PolicyNV, "Part 3 §23.9",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX),
                     Handle("policySession", S.TPMI_SH_POLICY)),
            params=(("operandB", S.TPM2B_OPERAND), ("offset", S.UINT16),
                    ("operation", S.TPM_EO_))),
    Command(TPM_CC.PolicyCounterTimer, "Part 3 §23.10",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("operandB", S.TPM2B_OPERAND), ("offset", S.UINT16),
                    ("operation", S.TPM_EO_))),
    Command(TPM_CC.PolicyCommandCode, "Part 3 §23.11",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("code", S.TPM_CC),)),
    Command(TPM_CC.PolicyPhysicalPresence, "Part 3 §23.12",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),)),
    # Library rev 1.83
    Command(TPM_CC.PolicyCapability, "Part 3 §23.23",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("operandB", S.TPM2B_OPERAND), ("offset", S.UINT16),
                    ("operation", S.TPM_EO_), ("capability", S.UINT32),
                    ("property", S.UINT32))),
    Command(TPM_CC.PolicyParameters, "Part 3 §23.24",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("pHash", S.TPM2B_DIGEST),)),
    Command(TPM_CC.PolicyCpHash, "Part 3 §23.13",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("cpHashA", S.TPM2B_DIGEST),)),
    Command(TPM_CC.PolicyNameHash, "Part 3 §23.14",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("nameHash", S.TPM2B_DIGEST),)),
    Command(TPM_CC.PolicyDuplicationSelect, "Part 3 §23.15",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("objectName", S.TPM2B_NAME), ("newParentName", S.TPM2B_NAME),
                    ("includeObject", S.TPMI_YES_NO))),
    Command(TPM_CC.PolicyAuthorize, "Part 3 §23.16",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("approvedPolicy", S.TPM2B_DIGEST), ("policyRef", S.TPM2B_NONCE),
                    ("keySign", S.TPM2B_NAME), ("checkTicket", O.TPMT_TK_VERIFIED))),
    Command(TPM_CC.PolicyAuthValue, "Part 3 §23.17",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),)),
    Command(TPM_CC.PolicyPassword, "Part 3 §23.18",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),)),
    Command(TPM_CC.PolicyGetDigest, "Part 3 §23.19",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            response=(("policyDigest", S.TPM2B_DIGEST),)),
    Command(TPM_CC.PolicyNvWritten, "Part 3 §23.20",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("writtenSet", S.TPMI_YES_NO),)),
    Command(TPM_CC.PolicyAuthorizeNV, "Part 3 §23.22",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX),
                     Handle("policySession", S.TPMI_SH_POLICY))),
    Command(TPM_CC.PolicyTemplate, "Part 3 §23.21",
            handles=(Handle("policySession", S.TPMI_SH_POLICY),),
            params=(("templateHash", S.TPM2B_DIGEST),)),
    Command(TPM_CC.PolicyRestart, "Part 3 §11.2",
            handles=(Handle("sessionHandle", S.TPMI_SH_POLICY),)),
    # Part 3 §24: hierarchy commands
    Command(TPM_CC.CreatePrimary, "Part 3 §24.1",
            handles=(Handle("primaryHandle", S.TPMI_RH_HIERARCHY.plus, Auth.USER),),
            params=(("inSensitive", O.TPM2B_SENSITIVE_CREATE), ("inPublic", O.TPM2B_PUBLIC),
                    ("outsideInfo", S.TPM2B_DATA), ("creationPCR", S.TPML_PCR_SELECTION)),
            response=(("outPublic", O.TPM2B_PUBLIC), ("creationData", O.TPM2B_CREATION_DATA),
                      ("creationHash", S.TPM2B_DIGEST), ("creationTicket", O.TPMT_TK_CREATION),
                      ("name", S.TPM2B_NAME)), response_handle=True, pp=True),
    Command(TPM_CC.Clear, "Part 3 §24.6",
            handles=(Handle("authHandle", S.TPMI_RH_CLEAR, Auth.USER),), nv=True,
            extensive=True, pp=True),
    Command(TPM_CC.ClearControl, "Part 3 §24.7",
            handles=(Handle("auth", S.TPMI_RH_CLEAR, Auth.USER),),
            params=(("disable", S.TPMI_YES_NO),), nv=True, pp=True),
    Command(TPM_CC.HierarchyChangeAuth, "Part 3 §24.8",
            handles=(Handle("authHandle", S.TPMI_RH_HIERARCHY_AUTH, Auth.USER),),
            params=(("newAuth", S.TPM2B_AUTH),), nv=True, pp=True),
    Command(TPM_CC.HierarchyControl, "Part 3 §24.5",
            handles=(Handle("authHandle", S.TPMI_RH_HIERARCHY, Auth.USER),),
            params=(("enable", S.TPMI_RH_ENABLES), ("state", S.TPMI_YES_NO)), nv=True,
            extensive=True, pp=True),
    Command(TPM_CC.SetPrimaryPolicy, "Part 3 §24.9",
            handles=(Handle("authHandle", S.TPMI_RH_HIERARCHY_POLICY, Auth.USER),),
            params=(("authPolicy", S.TPM2B_DIGEST), ("hashAlg", S.TPMI_ALG_HASH.plus)), nv=True,
            pp=True),
    Command(TPM_CC.ChangePPS, "Part 3 §24.10",
            handles=(Handle("authHandle", S.TPMI_RH_PLATFORM, Auth.USER),), nv=True,
            extensive=True, pp=True),
    Command(TPM_CC.ChangeEPS, "Part 3 §24.11",
            handles=(Handle("authHandle", S.TPMI_RH_PLATFORM, Auth.USER),), nv=True,
            extensive=True, pp=True),
    # Part 3 §25: dictionary attack functions
    Command(TPM_CC.DictionaryAttackLockReset, "Part 3 §25.2",
            handles=(Handle("lockHandle", LOCKOUT, Auth.USER),), nv=True),
    Command(TPM_CC.DictionaryAttackParameters, "Part 3 §25.3",
            handles=(Handle("lockHandle", LOCKOUT, Auth.USER),),
            params=(("newMaxTries", S.UINT32), ("newRecoveryTime", S.UINT32),
                    ("lockoutRecovery", S.UINT32)), nv=True),
    # Part 3 §26: miscellaneous management functions
    Command(TPM_CC.PP_Commands, "Part 3 §26.2",
            handles=(Handle("auth", S.TPMI_RH_PLATFORM, Auth.USER),),
            params=(("setList", S.TPML_CC), ("clearList", S.TPML_CC)), nv=True, pp=True),
    Command(TPM_CC.SetAlgorithmSet, "Part 3 §26.3",
            handles=(Handle("authHandle", S.TPMI_RH_PLATFORM, Auth.USER),),
            params=(("algorithmSet", S.UINT32),), nv=True),
    # Part 3 §21: command audit
    Command(TPM_CC.SetCommandCodeAuditStatus, "Part 3 §21.2",
            handles=(Handle("auth", S.TPMI_RH_PROVISION, Auth.USER),),
            params=(("auditAlg", S.TPMI_ALG_HASH.plus), ("setList", S.TPML_CC),
                    ("clearList", S.TPML_CC)), nv=True, pp=True),
    # Part 3 §28: context management
    Command(TPM_CC.EvictControl, "Part 3 §28.5",
            handles=(Handle("auth", S.TPMI_RH_PROVISION, Auth.USER),
                     Handle("objectHandle", S.TPMI_DH_OBJECT)),
            params=(("persistentHandle", S.TPMI_DH_PERSISTENT),), nv=True, pp=True),
    Command(TPM_CC.ContextSave, "Part 3 §28.2",
            handles=(Handle("saveHandle", S.TPMI_DH_CONTEXT),),
            response=(("context", O.TPMS_CONTEXT),), sessions=False),
    Command(TPM_CC.ContextLoad, "Part 3 §28.3",
            params=(("context", O.TPMS_CONTEXT),), response_handle=True, sessions=False),
    Command(TPM_CC.FlushContext, "Part 3 §28.4",
            params=(("flushHandle", S.TPMI_DH_CONTEXT),), sessions=False),
    # Part 3 §29: clocks and timers
    Command(TPM_CC.ReadClock, "Part 3 §29.1",
            response=(("currentTime", S.TPMS_TIME_INFO),)),
    Command(TPM_CC.ClockSet, "Part 3 §29.2",
            handles=(Handle("auth", S.TPMI_RH_PROVISION, Auth.USER),),
            params=(("newTime", S.UINT64),), nv=True, pp=True),
    Command(TPM_CC.ClockRateAdjust, "Part 3 §29.3",
            handles=(Handle("auth", S.TPMI_RH_PROVISION, Auth.USER),),
            params=(("rateAdjust", CLOCK_ADJUST),), pp=True),
    # Part 3 §33: authenticated countdown timers (Library rev 1.59)
    Command(TPM_CC.ACT_SetTimeout, "Part 3 §33.2",
            handles=(Handle("actHandle", S.TPMI_RH_ACT, Auth.USER),),
            params=(("startTimeout", S.UINT32),)),
    # Part 3 §30: capability commands
    Command(TPM_CC.GetCapability, "Part 3 §30.2",
            params=(("capability", S.TPM_CAP_), ("property", S.UINT32),
                    ("propertyCount", S.UINT32)),
            response=(("moreData", S.TPMI_YES_NO), ("capabilityData", S.TPMS_CAPABILITY_DATA))),
    Command(TPM_CC.TestParms, "Part 3 §30.3",
            params=(("parameters", S.TPMT_PUBLIC_PARMS),)),
    # Part 3 §31: non-volatile storage
    Command(TPM_CC.NV_DefineSpace, "Part 3 §31.3",
            handles=(Handle("authHandle", S.TPMI_RH_PROVISION, Auth.USER),),
            params=(("auth", S.TPM2B_AUTH), ("publicInfo", N.TPM2B_NV_PUBLIC)), nv=True, pp=True),
    Command(TPM_CC.NV_UndefineSpace, "Part 3 §31.4",
            handles=(Handle("authHandle", S.TPMI_RH_PROVISION, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)), nv=True, pp=True),
    Command(TPM_CC.NV_UndefineSpaceSpecial, "Part 3 §31.5",
            handles=(Handle("nvIndex", N.TPMI_RH_NV_INDEX, Auth.ADMIN),
                     Handle("platform", S.TPMI_RH_PLATFORM, Auth.USER)), nv=True, pp=True),
    Command(TPM_CC.NV_ReadPublic, "Part 3 §31.6",
            handles=(Handle("nvIndex", N.TPMI_RH_NV_INDEX),),
            response=(("nvPublic", N.TPM2B_NV_PUBLIC), ("nvName", S.TPM2B_NAME))),
    Command(TPM_CC.NV_Write, "Part 3 §31.7",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)),
            params=(("data", S.TPM2B_MAX_NV_BUFFER), ("offset", S.UINT16)), nv=True),
    Command(TPM_CC.NV_Increment, "Part 3 §31.8",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)), nv=True),
    Command(TPM_CC.NV_Extend, "Part 3 §31.9",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)),
            params=(("data", S.TPM2B_MAX_NV_BUFFER),), nv=True),
    Command(TPM_CC.NV_SetBits, "Part 3 §31.10",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)),
            params=(("bits", S.UINT64),), nv=True),
    Command(TPM_CC.NV_WriteLock, "Part 3 §31.11",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)), nv=True),
    Command(TPM_CC.NV_GlobalWriteLock, "Part 3 §31.12",
            handles=(Handle("authHandle", S.TPMI_RH_PROVISION, Auth.USER),), nv=True, pp=True),
    Command(TPM_CC.NV_Read, "Part 3 §31.13",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)),
            params=(("size", S.UINT16), ("offset", S.UINT16)),
            response=(("data", S.TPM2B_MAX_NV_BUFFER),)),
    Command(TPM_CC.NV_ReadLock, "Part 3 §31.14",
            handles=(Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)), nv=True),
    Command(TPM_CC.NV_ChangeAuth, "Part 3 §31.15",
            handles=(Handle("nvIndex", N.TPMI_RH_NV_INDEX, Auth.ADMIN),),
            params=(("newAuth", S.TPM2B_AUTH),), nv=True),
    Command(TPM_CC.NV_Certify, "Part 3 §31.16",
            handles=(Handle("signHandle", S.TPMI_DH_OBJECT.plus, Auth.USER),
                     Handle("authHandle", N.TPMI_RH_NV_AUTH, Auth.USER),
                     Handle("nvIndex", N.TPMI_RH_NV_INDEX)),
            params=(("qualifyingData", S.TPM2B_DATA), ("inScheme", O.TPMT_SIG_SCHEME),
                    ("size", S.UINT16), ("offset", S.UINT16)),
            response=(("certifyInfo", A.TPM2B_ATTEST), ("signature", O.TPMT_SIGNATURE_PLUS))),
)

BY_CODE = {int(c.code): c for c in COMMANDS}
