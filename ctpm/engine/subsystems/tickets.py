"""Tickets (Part 1 §24.1): HMACs with a hierarchy proof that only this TPM ever checks; the
hash-check ticket of TPM2_Hash and hash sequences, and the NULL ticket."""
import hmac
import struct

from construct import Container

from ...wire.constants import TPM_RH, TPM_ST
from ...wire.structures import TPM_GENERATED_VALUE

TICKET_HASH = "sha512"
# data that starts like a TPM-generated structure gets no ticket
GENERATED = struct.pack(">I", TPM_GENERATED_VALUE)


def null_ticket(tag):
    return Container(tag=tag, hierarchy=TPM_RH.NULL, digest=b"")


def hashcheck_ticket(tpm, hierarchy, alg, out_hash):
    """TPMT_TK_HASHCHECK (Part 2 §10.7.6): HMAC(proof, tag || hashAlg || digest)."""
    mac = hmac.new(tpm.state.proof(hierarchy), struct.pack(">HH", TPM_ST.HASHCHECK, alg) + out_hash,
                   TICKET_HASH).digest()
    return Container(tag=TPM_ST.HASHCHECK, hierarchy=hierarchy, digest=mac)
