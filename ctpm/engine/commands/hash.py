"""Part 3 §15: hash (TPM2_Hash) and the hash-check ticket it issues."""
import hmac
import struct

from construct import Container

from ...crypto.hashes import digest
from ...wire.constants import TPM_RH, TPM_ST
from ...wire.structures import TPM_GENERATED_VALUE

# Tickets are HMACs with a hierarchy proof (Part 1 §24.1); only this TPM ever checks them.
TICKET_HASH = "sha512"
_GENERATED = struct.pack(">I", TPM_GENERATED_VALUE)


def null_ticket(tag):
    return Container(tag=tag, hierarchy=TPM_RH.NULL, digest=b"")


def hashcheck_ticket(tpm, hierarchy, alg, out_hash):
    """TPMT_TK_HASHCHECK (Part 2 §10.7.6): HMAC(proof, tag || hashAlg || digest)."""
    mac = hmac.new(tpm.state.proof(hierarchy), struct.pack(">HH", TPM_ST.HASHCHECK, alg) + out_hash,
                   TICKET_HASH).digest()
    return Container(tag=TPM_ST.HASHCHECK, hierarchy=hierarchy, digest=mac)


def hash_(tpm, ctx, data, hash_alg, hierarchy):
    """Part 3 §15.4: no ticket for the NULL hierarchy, nor for data that could pass as
    TPM-generated (starts with TPM_GENERATED_VALUE)."""
    out = digest(hash_alg, data)
    if hierarchy == TPM_RH.NULL or data[:4] == _GENERATED:
        return (out, null_ticket(TPM_ST.HASHCHECK))
    return (out, hashcheck_ticket(tpm, hierarchy, hash_alg, out))
