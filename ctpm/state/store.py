"""Where a TPM's NV lives: in memory (`MemoryStore`), or in a state directory (`DirStore`,
an append-only journal with snapshots: ctpm/state/journal.py).

A `MemoryStore` gets the engine's whole NV image (opaque bytes) after every command that
changed NV; a `DirStore` gets the NV dict itself (`save_nv`) and records only what changed;
a `VolatileStore` keeps nothing (the engine's own dict is the only copy).
"""
from .errors import StoreError
from .journal import DirStore

__all__ = ["DirStore", "MemoryStore", "StoreError", "VolatileStore"]


class MemoryStore:
    """NV kept in RAM: lost when the process ends (the default without --state)."""

    def __init__(self, blob=None):
        self.blob = blob

    def load(self):
        return self.blob

    def save(self, blob: bytes):
        self.blob = bytes(blob)

    def describe(self):
        return "memory"


class VolatileStore:
    """No store at all, for a TPM that keeps nothing (the ephemeral and SVSM modes): its NV
    lives only in the engine's memory, for as long as the process. A `MemoryStore` would
    serialize the whole NV image after every NV change for a copy no one reads again."""

    def load_nv(self):
        return None                 # every start is a TPM fresh from the factory

    def save_nv(self, nv: dict):
        pass

    def describe(self):
        return "none (volatile)"

