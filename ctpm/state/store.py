"""Where a TPM's NV image lives: in memory, or in a directory that survives crashes.

The engine hands over one opaque blob (its whole NV image) after every command that changed
NV. `DirStore` writes it crash-safely: a temporary file, fsync, rename over the old one, fsync
of the directory, so a power cut leaves either the old image or the new one, never a mix.
"""
import os


class StoreError(Exception):
    """The state directory cannot be used (missing, not writable, corrupt image)."""


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


class DirStore:
    """NV image in `<dir>/nv.bin`, replaced atomically on every save."""

    FILE = "nv.bin"

    def __init__(self, path):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            try:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
            except OSError as e:
                raise StoreError(f"state directory {self.path}: {e.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StoreError(f"state directory {self.path} is not writable")
        self.file = os.path.join(self.path, self.FILE)

    def load(self):
        try:
            with open(self.file, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {self.file}: {e.strerror}") from None

    def save(self, blob: bytes):
        tmp = self.file + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(blob)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.file)
        dfd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def describe(self):
        return self.path
