"""The rollback anchor: a small file outside the state directory that remembers how far the
state has come, so that a state directory replaced by an older copy of itself is refused.

Why outside: everything inside the directory can be copied and put back together, so no
content of the directory alone can tell an old copy from the latest. The state carries a
generation number (`DirStore.generation`: in the snapshot's header and in "g" records of
the journal; with a state key both are authenticated, in the AEAD's associated data and
the encrypted record). The anchor holds the state's id and the generation last reached.
The generation moves on at every start, at every compaction and, while the state changes,
at least every `DirStore.anchor_interval` seconds: first the state (a record, fdatasync),
then the anchor. So the state's generation is the anchor's, or one more (a crash between
the two writes); anything older is a rollback.

What it does not do: a copy taken after the last move of the generation and put back before
the next one is not noticed (the window is at most `anchor_interval` seconds of changes);
whoever can write both the directory and the anchor can roll both back together; without a
state key the generation in the directory is only checksummed, not authenticated, so it
stops an accidental restore, not an attacker who edits it. The anchor belongs on storage the
VM host's tenants and backups do not roll back (another file system, the host's root-only
/var/lib, or a TPM NV counter with --state-key-tpm).

File: one line of JSON {"format": "ctpm-anchor", "version": 1, "state_id", "generation",
"sha256"} written to a temporary file, fsynced and renamed.
"""
import hashlib
import json
import os

from .errors import StoreError

FORMAT = "ctpm-anchor"


def _digest(state_id: str, generation: int) -> str:
    return hashlib.sha256(f"{FORMAT}:{state_id}:{generation}".encode()).hexdigest()


def read(path: str):
    """(state id hex, generation), or None if there is no anchor file."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"state anchor {path}: {e.strerror}") from None
    try:
        a = json.loads(data)
        state_id, generation = a["state_id"], a["generation"]
        if (a.get("format") != FORMAT or a.get("version") != 1 or not isinstance(generation, int)
                or a.get("sha256") != _digest(state_id, generation)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"state anchor {path} is damaged") from None
    return state_id, generation


def write(path: str, state_id: str, generation: int):
    """Durably replace the anchor (temporary file, fsync, rename, fsync of its directory)."""
    body = json.dumps({"format": FORMAT, "version": 1, "state_id": state_id,
                       "generation": generation,
                       "sha256": _digest(state_id, generation)}).encode() + b"\n"
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise StoreError(f"cannot write the state anchor {path}: {e.strerror}") from None


def check(path: str, where: str, state_id: str, generation: int):
    """StoreError (one line) unless the state at `where`, with `generation`, is the one the
    anchor remembers, as new as it or one step newer."""
    got = read(path)
    if got is None:
        raise StoreError(f"state anchor {path} does not exist, but {where} holds a TPM "
                         f"state (bind them with `ctpm state anchor --state {where} "
                         f"--state-anchor {path}`)")
    anchor_id, anchor_generation = got
    if anchor_id != state_id:
        raise StoreError(f"state anchor {path} belongs to another TPM state than {where}")
    if generation < anchor_generation:
        raise StoreError(f"TPM state in {where} is older than its anchor {path} (generation "
                         f"{generation} < {anchor_generation}): rolled back or restored "
                         f"from a copy; refusing it")
    if generation > anchor_generation + 1:
        raise StoreError(f"state anchor {path} is older than the TPM state in {where} "
                         f"(generation {anchor_generation} < {generation}): the anchor was "
                         f"rolled back or belongs elsewhere")
