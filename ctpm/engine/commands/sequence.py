"""Part 3 §17: hash, HMAC and event sequences.

A sequence lives in an object slot (a transient handle) with the authValue given when it was
started. Like the reference TPM's, it has the Empty Buffer as Name, no nameAlg, the NULL
hierarchy (so it cannot be persisted) and is exempt from dictionary-attack protection.
"""
import hmac as hmac_mod

from construct import Container

from ...crypto import hashes
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH, TPM_ST, TPMA_OBJECT as OA
from ...wire.structures import PCR_HASHES
from ..subsystems import keyuse
from .hash import _GENERATED, hashcheck_ticket, null_ticket
from ..subsystems.objects import free_object_handle
from .pcr import _check_extend, extend

_PUBLIC = Container(type=TPM_ALG.NULL, nameAlg=TPM_ALG.NULL,
                    objectAttributes=int(OA.NODA | OA.USERWITHAUTH), authPolicy=b"",
                    parameters=None, unique=None)


class Sequence:
    """A hash (one digest), HMAC or event (every bank) sequence in progress."""

    hierarchy = TPM_RH.NULL
    name = b""
    qualified_name = b""
    primary = False
    key = None
    evict = None
    sensitive = None
    public = _PUBLIC

    def __init__(self, kind, auth, states):
        self.kind = kind                # "hash", "hmac" or "event"
        self.auth_value = auth
        self.states = states            # {hash alg: hashlib/hmac object}
        self.first_block = True
        self.ticket_safe = False

    @property
    def attributes(self):
        return _PUBLIC.objectAttributes

    def update(self, data: bytes):
        if self.kind == "hash" and self.first_block:
            self.first_block = False
            self.ticket_safe = data[:4] != _GENERATED
        for state in self.states.values():
            state.update(data)


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
    del tpm.state.objects[handle]
    if seq.kind == "hmac" or hierarchy == TPM_RH.NULL or not seq.ticket_safe:
        return (result, null_ticket(TPM_ST.HASHCHECK))
    return (result, hashcheck_ticket(tpm, hierarchy, alg, result))


def event_sequence_complete(tpm, ctx, pcr, handle, buffer):
    """Part 3 §17.6: a digest in every bank, each extended into the PCR (unless NULL)."""
    seq = tpm.state.object(handle)
    if not isinstance(seq, Sequence) or seq.kind != "event":
        raise TpmError(TPM_RC.MODE, handle=2)
    if pcr != TPM_RH.NULL:
        _check_extend(tpm, ctx, pcr)
    seq.update(buffer)
    out = []
    for alg, state in seq.states.items():
        d = state.digest()
        out.append(Container(hashAlg=alg, digest=d))
        if pcr != TPM_RH.NULL:
            extend(tpm.state, pcr, alg, d)
    del tpm.state.objects[handle]
    return (out,)
