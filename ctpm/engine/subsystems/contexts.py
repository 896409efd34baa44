"""Saved contexts (Part 1 §30): the blob that TPM2_ContextSave gives out and TPM2_ContextLoad
takes back (the commands are engine/commands/context.py), and the saved-session bookkeeping.

A saved context (Part 1 §30) leaves the TPM as a TPMS_CONTEXT whose contextBlob is

    TPM2B_DIGEST(integrity) || AES-256-CFB(symKey, iv, sequence || payload)

    symKey || iv = KDFa(SHA-512, hProof, "CONTEXT", sequence, savedHandle, 256 + 128)
    integrity    = HMAC-SHA-512(hProof, totalResetCount [|| clearCount] || sequence
                                || savedHandle || encrypted part)

as in the reference's ComputeContextProtectionKey / ComputeContextIntegrity (the integers
big-endian here: totalResetCount UINT64, clearCount UINT32 - only for savedHandle 0x80000002,
an stClear object -, sequence UINT64, savedHandle UINT32). hProof is the proof of the
TPMS_CONTEXT's hierarchy: the object's hierarchy, TPM_RH_NULL (nullProof) for sessions. So a
context dies with a TPM Reset (totalResetCount, and nullProof for NULL-hierarchy objects and
sessions), an stClear object's context also with a TPM Restart (clearCount), and every
context of a hierarchy whose proof changes. The leading copy of the sequence inside the
encryption is the reference's "fingerprint".

The payload is this TPM's own encoding of the `Object` or `Session` dataclass: a kind byte,
then (field name, value) pairs for the dataclass fields, each value a tagged None / bool /
int / bytes / str / tuple. An object's public area travels as its canonical TPMT_PUBLIC
bytes, its sensitive area as the marshaled TPMT_SENSITIVE, and its `cryptography` key is
made again on first use. A field whose value has another type makes ContextSave fail loudly
(TPM_RC_FAILURE, logged) rather than losing it; tests/test_context.py round-trips every
field. Hash, HMAC and event sequences (savedHandle 0x80000001) keep their hash states in the
TPM, because Python's hash objects cannot export them: see `encode_sequence`.

Sessions follow the reference's Session.c: saving a session takes it out of the loaded set
and records (handle -> sequence) among the saved sessions; ContextLoad accepts only the
context with the sequence on record (a second load of the same blob, an older blob of the
same session, or the blob of a flushed session: TPM_RC_HANDLE on parameter 1) and restores the
session at its own handle. The bookkeeping - saved sessions, sequence counters, clearCount -
is `TpmState.contexts`, state-reset data: kept over TPM Restart and Resume, fresh after a TPM
Reset. Objects have no such record: an object context loads as often as it is presented,
each time at a new transient handle.
"""
import hmac
import logging
import struct
from collections import OrderedDict
from dataclasses import MISSING, fields

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ...crypto import symcipher
from ...crypto.kdf import kdfa
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_HT, TPM_RC
from ...wire.objects import SIZEOF_TPMS_CONTEXT_DATA, TPMT_PUBLIC_PLUS, TPMT_SENSITIVE
from .objects import Object
from .sequences import Sequence
from .sessions import Session

log = logging.getLogger("ctpm.engine")

CONTEXT_HASH = TPM_ALG.SHA512       # TPM_PT_CONTEXT_HASH
CONTEXT_SYM_BITS = 256              # TPM_PT_CONTEXT_SYM (AES), TPM_PT_CONTEXT_SYM_SIZE
_HASH_NAME = "sha512"
_DIGEST_SIZE = 64
_IV_SIZE = 16
_MAX_DIGEST = 64                    # what TPM2B_DIGEST unmarshals at most

OBJECT_CONTEXT = 0x80000000         # savedHandle of an ordinary object
SEQUENCE_CONTEXT = 0x80000001       # of a hash/HMAC sequence object
STCLEAR_CONTEXT = 0x80000002        # of an object with stClear
# The reference's MAX_CONTEXT_GAP (a 16-bit contextArray slot): saving a session fails with
# TPM_RC_CONTEXT_GAP once the oldest saved session is this many saves behind.
MAX_CONTEXT_GAP = 0x10000

# Sessions that may be active (loaded or saved) at once: the reference's MAX_ACTIVE_SESSIONS,
# or the loaded limit if that is higher. Past it StartAuthSession is TPM_RC_SESSION_HANDLES.
MAX_ACTIVE_SESSIONS = 64

OTHER_SESSION_TYPE = (TPM_HT.HMAC_SESSION ^ TPM_HT.POLICY_SESSION) << 24   # XOR: 0x02 <-> 0x03

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
KIND_OBJECT = b"O"
KIND_SESSION = b"S"
KIND_SEQUENCE = b"Q"
# Hash states of saved sequence contexts kept in the TPM (see encode_sequence), at most this
# many; the least recently saved or loaded goes first.
MAX_SAVED_SEQUENCES = 64


def new_bookkeeping() -> dict:
    """Context bookkeeping after a TPM Reset (the reference's gr.contextArray, contextCounter,
    objectContextID and clearCount). JSON-friendly: Shutdown(STATE) keeps it in NV."""
    return {"clear_count": 0, "object_sequence": 0, "session_sequence": 1,
            "saved_sessions": {}}


def max_active_sessions(config) -> int:
    return max(config.max_sessions, MAX_ACTIVE_SESSIONS)


def bookkeeping(state) -> dict:
    return state.contexts


def saved_session_handles(state) -> list:
    """Handles of the saved sessions, sorted."""
    return sorted(int(h, 16) for h in bookkeeping(state)["saved_sessions"])


def saved_key(handle: int) -> str:
    return f"{handle:08x}"


# -- the payload codec -------------------------------------------------------------------------

def _enc(value, out: list):
    if value is None:
        out.append(b"N")
    elif value is True or value is False:
        out.append(b"T" if value else b"F")
    elif isinstance(value, int):
        v = int(value)
        raw = v.to_bytes((v.bit_length() + 8) // 8 or 1, "big", signed=True)
        out.append(b"I" + bytes((len(raw),)) + raw)
    elif isinstance(value, (bytes, bytearray)):
        out.append(b"B" + _U16.pack(len(value)) + bytes(value))
    elif isinstance(value, str):
        raw = value.encode()
        out.append(b"S" + _U16.pack(len(raw)) + raw)
    elif isinstance(value, (tuple, list)):
        out.append(b"L" + _U16.pack(len(value)))
        for v in value:
            _enc(v, out)
    else:
        raise TypeError(f"cannot save a {type(value).__name__} in a context")


def _dec(buf: bytes, i: int):
    tag = buf[i:i + 1]
    i += 1
    if tag == b"N":
        return None, i
    if tag in (b"T", b"F"):
        return tag == b"T", i
    if tag == b"I":
        n = buf[i]
        return int.from_bytes(buf[i + 1:i + 1 + n], "big", signed=True), i + 1 + n
    if tag in (b"B", b"S"):
        n = _U16.unpack_from(buf, i)[0]
        raw = buf[i + 2:i + 2 + n]
        if len(raw) != n:
            raise ValueError("truncated")
        return (raw if tag == b"B" else raw.decode()), i + 2 + n
    if tag == b"L":
        n = _U16.unpack_from(buf, i)[0]
        i += 2
        items = []
        for _ in range(n):
            v, i = _dec(buf, i)
            items.append(v)
        return tuple(items), i
    raise ValueError(f"unknown tag {tag!r}")


def _encode_fields(kind: bytes, values: dict) -> bytes:
    out = [kind]
    for name, value in values.items():
        raw = name.encode()
        out.append(bytes((len(raw),)) + raw)
        _enc(value, out)
    return b"".join(out)


def decode_fields(payload: bytes) -> tuple:
    """(kind byte, {field: value}) of a payload `encode_object`/`encode_session` made."""
    kind, i, values = payload[:1], 1, {}
    while i < len(payload):
        n = payload[i]
        name = payload[i + 1:i + 1 + n].decode()
        values[name], i = _dec(payload, i + 1 + n)
    return kind, values


def _construct(cls, values: dict):
    """cls(**values) for its fields; a field missing from an older payload takes its default."""
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            kwargs[f.name] = values[f.name]
        elif f.default is not MISSING:
            kwargs[f.name] = f.default
        elif f.default_factory is not MISSING:
            kwargs[f.name] = f.default_factory()
        else:
            raise ValueError(f"context without {cls.__name__}.{f.name}")
    return cls(**kwargs)


def encode_object(obj: Object) -> bytes:
    values = {}
    for f in fields(Object):
        if f.name in ("public", "key"):         # public_bytes carries it; key is rebuilt
            continue
        value = getattr(obj, f.name)
        if f.name == "sensitive":
            value = None if value is None else TPMT_SENSITIVE.build(value)
        elif f.name == "evict":                 # a loaded copy is transient
            value = None
        values[f.name] = value
    return _encode_fields(KIND_OBJECT, values)


def decode_object(values: dict) -> Object:
    """The object again; its `cryptography` key is made on first use (engine/subsystems/keyuse.py)."""
    values = dict(values)
    values["public"] = TPMT_PUBLIC_PLUS.parse(values["public_bytes"])
    raw = values.get("sensitive")
    values["sensitive"] = None if raw is None else TPMT_SENSITIVE.parse(raw)
    return _construct(Object, values)


def _saved_sequences(state):
    """token -> {hash alg: hash state} of saved sequence contexts; emptied by a TPM Reset."""
    reset = state.nv["total_reset_count"]
    store = getattr(state, "saved_sequence_states", None)
    if store is None or store[0] != reset:
        store = state.saved_sequence_states = (reset, OrderedDict())
    return store[1]


def encode_sequence(state, seq) -> bytes:
    """A hash, HMAC or event sequence. Python's hash objects cannot export their state, so
    the state stays in the TPM (a copy, under a random token the blob carries) and the blob
    holds the rest of the sequence's attributes. Such a context loads as long as its state
    is kept: in this process, until a TPM Reset, among the last MAX_SAVED_SEQUENCES saved or
    loaded; otherwise its ContextLoad is TPM_RC_HANDLE (parameter 1), as a stale session's."""
    values = {k: v for k, v in vars(seq).items() if k != "states"}
    values["states"] = tuple(seq.states)
    token = state.drbg.generate(16)
    values["token"] = token
    payload = _encode_fields(KIND_SEQUENCE, values)
    store = _saved_sequences(state)
    store[token] = {alg: h.copy() for alg, h in seq.states.items()}
    while len(store) > MAX_SAVED_SEQUENCES:
        store.popitem(last=False)
    return payload


def decode_sequence(state, values: dict):
    values = dict(values)
    token, algs = values.pop("token"), values.pop("states")
    store = _saved_sequences(state)
    states = store.get(token)
    if states is None or tuple(states) != algs:
        raise TpmError(TPM_RC.HANDLE, param=1)
    store.move_to_end(token)
    seq = Sequence.__new__(Sequence)
    seq.__dict__.update(values)
    seq.states = {alg: h.copy() for alg, h in states.items()}
    return seq


def encode_session(session: Session) -> bytes:
    return _encode_fields(KIND_SESSION,
                          {f.name: getattr(session, f.name) for f in fields(Session)})


def decode_session(values: dict) -> Session:
    return _construct(Session, values)


# -- protection (Part 1 §30.3, §30.4) ------------------------------------------------------------

def _cipher(state, hierarchy: int, sequence: int, handle: int):
    bits = CONTEXT_SYM_BITS + 8 * _IV_SIZE
    material = kdfa(CONTEXT_HASH, state.proof(hierarchy), b"CONTEXT", _U64.pack(sequence),
                    _U32.pack(handle), bits)
    key = material[:CONTEXT_SYM_BITS // 8]
    return Cipher(algorithms.AES(key), symcipher.CFB(material[CONTEXT_SYM_BITS // 8:]))


def _integrity(state, hierarchy: int, sequence: int, handle: int, encrypted: bytes) -> bytes:
    msg = [_U64.pack(state.nv["total_reset_count"])]
    if handle == STCLEAR_CONTEXT:
        msg.append(_U32.pack(bookkeeping(state)["clear_count"]))
    msg += [_U64.pack(sequence), _U32.pack(handle), encrypted]
    return hmac.new(state.proof(hierarchy), b"".join(msg), _HASH_NAME).digest()


def seal(state, hierarchy, sequence, handle, payload: bytes) -> bytes:
    enc = _cipher(state, hierarchy, sequence, handle).encryptor()
    encrypted = enc.update(_U64.pack(sequence) + payload) + enc.finalize()
    mac = _integrity(state, hierarchy, sequence, handle, encrypted)
    blob = _U16.pack(len(mac)) + mac + encrypted
    if len(blob) > SIZEOF_TPMS_CONTEXT_DATA:
        raise TpmError(TPM_RC.FAILURE)      # cannot happen with this TPM's objects
    return blob


def open_blob(state, context) -> bytes:
    """Check and decrypt a TPMS_CONTEXT's blob, in the reference's order; the payload."""
    blob = context.contextBlob
    if len(blob) < 2:
        raise TpmError(TPM_RC.INSUFFICIENT)
    size = _U16.unpack_from(blob)[0]
    if size > _MAX_DIGEST:
        raise TpmError(TPM_RC.SIZE)
    if len(blob) < 2 + size:
        raise TpmError(TPM_RC.INSUFFICIENT)
    if size != _DIGEST_SIZE:
        raise TpmError(TPM_RC.SIZE, param=1)
    encrypted = blob[2 + size:]
    if len(encrypted) < _U64.size:
        raise TpmError(TPM_RC.SIZE, param=1)
    sequence, handle, hierarchy = context.sequence, context.savedHandle, context.hierarchy
    expected = _integrity(state, hierarchy, sequence, handle, encrypted)
    if not hmac.compare_digest(blob[2:2 + size], expected):
        raise TpmError(TPM_RC.INTEGRITY, param=1)
    dec = _cipher(state, hierarchy, sequence, handle).decryptor()
    plain = dec.update(encrypted) + dec.finalize()
    if plain[:8] != _U64.pack(sequence):    # the fingerprint: only a broken TPM gets here
        raise TpmError(TPM_RC.FAILURE)
    return plain[8:]
