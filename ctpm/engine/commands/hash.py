"""Part 3 §15: hash (TPM2_Hash) and the hash-check ticket it issues."""
from ...crypto.hashes import digest
from ...wire.constants import TPM_RH, TPM_ST
from ..subsystems.tickets import GENERATED, hashcheck_ticket, null_ticket


def hash_(tpm, ctx, data, hash_alg, hierarchy):
    """Part 3 §15.4: no ticket for the NULL hierarchy, nor for data that could pass as
    TPM-generated (starts with TPM_GENERATED_VALUE)."""
    out = digest(hash_alg, data)
    if hierarchy == TPM_RH.NULL or data[:4] == GENERATED:
        return (out, null_ticket(TPM_ST.HASHCHECK))
    return (out, hashcheck_ticket(tpm, hierarchy, hash_alg, out))
