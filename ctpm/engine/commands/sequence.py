"""Part 3 §17: hash, HMAC and event sequences (the sequence object itself is
engine/subsystems/sequences.py)."""
import hmac as hmac_mod

from construct import Container

from ...crypto import hashes
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH, TPM_ST
from ...wire.structures import PCR_HASHES
from ..subsystems import keyuse
from ..subsystems.objects import free_object_handle
from ..subsystems.pcr_banks import check_extend, extend
from ..subsystems.sequences import Sequence
from ..subsystems.tickets import hashcheck_ticket, null_ticket


def _start(tpm, kind, auth, states):
    state = tpm.state
    handle = free_object_handle(state)
    state.objects[handle] = Sequence(kind, auth, states)
    return handle


def _sequence(tpm, handle, *kinds):
    obj = tpm.state.object(handle)
    if not isinstance(obj, Sequence) or obj.kind not in kinds:
        raise TpmError(TPM_RC.MODE, handle=1)
    return obj


def hash_sequence_start(tpm, ctx, auth, hash_alg):
    """Part 3 §17.3: a hash sequence, or with TPM_ALG_NULL an event sequence."""
    if hash_alg == TPM_ALG.NULL:
        # every hash that can be a PCR bank, as PCR_Event (not SM3_256)
        return (_start(tpm, "event", auth, {a: hashes.new(a) for a in PCR_HASHES}),)
    return (_start(tpm, "hash", auth, {hash_alg: hashes.new(hash_alg)}),)


def hmac_start(tpm, ctx, key_handle, auth, hash_alg):
    """Part 3 §17.2: an HMAC sequence keyed by a keyed-hash signing key."""
    key = tpm.state.object(key_handle)
    alg = keyuse.hmac_hash(key, hash_alg)
    mac = hmac_mod.new(key.sensitive.sensitive, digestmod=hashes.HASH_NAMES[alg])
    return (_start(tpm, "hmac", auth, {alg: mac}),)


def sequence_update(tpm, ctx, handle, buffer):
    """Part 3 §17.4."""
    _sequence(tpm, handle, "hash", "hmac", "event").update(buffer)


def sequence_complete(tpm, ctx, handle, buffer, hierarchy):
    """Part 3 §17.5: the digest (with a ticket if the data could not pass as TPM-made) or
    the HMAC; the sequence is gone afterwards."""
    seq = _sequence(tpm, handle, "hash", "hmac")
    seq.update(buffer)
    ((alg, state),) = seq.states.items()
    result = state.digest()
    ctx.flush_after_response(handle)
    if seq.kind == "hmac" or hierarchy == TPM_RH.NULL or not seq.ticket_safe:
        return (result, null_ticket(TPM_ST.HASHCHECK))
    return (result, hashcheck_ticket(tpm, hierarchy, alg, result))


def event_sequence_complete(tpm, ctx, pcr, handle, buffer):
    """Part 3 §17.6: a digest in every bank, each extended into the PCR (unless NULL)."""
    seq = tpm.state.object(handle)
    if not isinstance(seq, Sequence) or seq.kind != "event":
        raise TpmError(TPM_RC.MODE, handle=2)
    if pcr != TPM_RH.NULL:
        check_extend(tpm, ctx, pcr)
    seq.update(buffer)
    out = []
    for alg, state in seq.states.items():
        d = state.digest()
        out.append(Container(hashAlg=alg, digest=d))
        if pcr != TPM_RH.NULL:
            extend(tpm.state, pcr, alg, d)
    ctx.flush_after_response(handle)
    return (out,)
