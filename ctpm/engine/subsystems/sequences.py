"""Hash, HMAC and event sequence objects (Part 3 §17 starts and completes them, in
engine/commands/sequence.py; ContextSave keeps their hash states, engine/subsystems/contexts.py).

A sequence lives in an object slot (a transient handle) with the authValue given when it was
started. Like the reference TPM's, it has the Empty Buffer as Name, no nameAlg, the NULL
hierarchy (so it cannot be persisted) and is exempt from dictionary-attack protection.
"""
from construct import Container

from ...wire.constants import TPM_ALG, TPM_RH, TPMA_OBJECT as OA
from .tickets import GENERATED


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
            self.ticket_safe = data[:4] != GENERATED
        for state in self.states.values():
            state.update(data)
