"""Part 2 §10.12: attestation structures (TPMS_ATTEST and its union), and the handle
interfaces only the attestation commands use.

The TPM builds TPMS_ATTEST and returns it marshaled in a TPM2B_ATTEST; the structures parse
too, for tests and for verifiers written against this module.
"""
from construct import Switch, this

from .base import BadSelector, Int, Record, Sized, Tpm2b
from .constants import TPM_HT, TPM_RC, TPM_RH, TPM_ST
from .structures import (TPM2B_DATA, TPM2B_DIGEST, TPM2B_MAX_NV_BUFFER, TPM2B_NAME,
                         TPM_ALG_ID, TPMI_YES_NO, TPML_PCR_SELECTION, TPMS_CLOCK_INFO,
                         TPMS_TIME_INFO, UINT16, UINT32, UINT64)

TPM_GENERATED_VALUE = 0xFF544347
# TPM_ST_ATTEST_NV_DIGEST (Part 2 §6.9, added with the NV_Certify digest form)
TPM_ST_ATTEST_NV_DIGEST = 0x801C

# Part 2 §9.21-ish interfaces
TPMI_RH_ENDORSEMENT = Int(4, frozenset((TPM_RH.ENDORSEMENT,)), TPM_RC.VALUE)
TPMI_SH_HMAC = Int(4, lambda v: v >> 24 == TPM_HT.HMAC_SESSION, TPM_RC.VALUE)

ATTEST_TYPES = frozenset((TPM_ST.ATTEST_CERTIFY, TPM_ST.ATTEST_QUOTE,
                          TPM_ST.ATTEST_SESSION_AUDIT, TPM_ST.ATTEST_COMMAND_AUDIT,
                          TPM_ST.ATTEST_TIME, TPM_ST.ATTEST_CREATION, TPM_ST.ATTEST_NV,
                          TPM_ST_ATTEST_NV_DIGEST))
TPMI_ST_ATTEST = Int(2, ATTEST_TYPES, TPM_RC.SELECTOR)

TPMS_CERTIFY_INFO = Record("name" / TPM2B_NAME, "qualifiedName" / TPM2B_NAME)
TPMS_QUOTE_INFO = Record("pcrSelect" / TPML_PCR_SELECTION, "pcrDigest" / TPM2B_DIGEST)
TPMS_COMMAND_AUDIT_INFO = Record("auditCounter" / UINT64, "digestAlg" / TPM_ALG_ID,
                                 "auditDigest" / TPM2B_DIGEST,
                                 "commandDigest" / TPM2B_DIGEST)
TPMS_SESSION_AUDIT_INFO = Record("exclusiveSession" / TPMI_YES_NO,
                                 "sessionDigest" / TPM2B_DIGEST)
TPMS_TIME_ATTEST_INFO = Record("time" / TPMS_TIME_INFO, "firmwareVersion" / UINT64)
TPMS_CREATION_INFO = Record("objectName" / TPM2B_NAME, "creationHash" / TPM2B_DIGEST)
TPMS_NV_CERTIFY_INFO = Record("indexName" / TPM2B_NAME, "offset" / UINT16,
                              "nvContents" / TPM2B_MAX_NV_BUFFER)
TPMS_NV_DIGEST_CERTIFY_INFO = Record("indexName" / TPM2B_NAME, "nvDigest" / TPM2B_DIGEST)

TPMU_ATTEST = Switch(this.type, {
    TPM_ST.ATTEST_CERTIFY: TPMS_CERTIFY_INFO,
    TPM_ST.ATTEST_CREATION: TPMS_CREATION_INFO,
    TPM_ST.ATTEST_QUOTE: TPMS_QUOTE_INFO,
    TPM_ST.ATTEST_COMMAND_AUDIT: TPMS_COMMAND_AUDIT_INFO,
    TPM_ST.ATTEST_SESSION_AUDIT: TPMS_SESSION_AUDIT_INFO,
    TPM_ST.ATTEST_TIME: TPMS_TIME_ATTEST_INFO,
    TPM_ST.ATTEST_NV: TPMS_NV_CERTIFY_INFO,
    TPM_ST_ATTEST_NV_DIGEST: TPMS_NV_DIGEST_CERTIFY_INFO,
}, default=BadSelector())

TPMS_ATTEST = Record("magic" / UINT32, "type" / TPMI_ST_ATTEST,
                     "qualifiedSigner" / TPM2B_NAME, "extraData" / TPM2B_DATA,
                     "clockInfo" / TPMS_CLOCK_INFO, "firmwareVersion" / UINT64,
                     "attested" / TPMU_ATTEST)
# sizeof(TPMS_ATTEST) in the reference is a little over 1.1 KiB (the NV contents dominate)
TPM2B_ATTEST = Tpm2b(0xFFFF)
TPM2B_ATTEST_PARSED = Sized(TPMS_ATTEST)

__all__ = [n for n in dir() if n.startswith(("TPM", "ATTEST"))]
