"""Where a TPM's NV lives: in memory (`MemoryStore`), or in a state directory (`DirStore`,
an append-only journal with snapshots: ctpm/state/journal.py).

A `MemoryStore` gets the engine's whole NV image (opaque bytes) after every command that
changed NV; a `DirStore` gets the NV dict itself (`save_nv`) and records only what changed.
"""
from .errors import StoreError
from .journal import DirStore

__all__ = ["DirStore", "MemoryStore", "StoreError"]


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
