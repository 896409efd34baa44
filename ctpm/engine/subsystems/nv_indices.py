"""NV indices, kept in the NV image (state.nv["nv_indices"]); the Part 3 §31 commands are
engine/commands/nv.py.

Each index is stored as {"public": TPMS_NV_PUBLIC hex (its attributes carry WRITTEN and the
locks), "auth": authValue hex, "data": contents hex}. The checks follow the reference TPM's
NvDefineSpace, NvReadAccessChecks and NvWriteAccessChecks, in its order. The attributes and
data of an orderly index (TPMA_NV_ORDERLY) live in RAM and reach the image only now and then
(engine/subsystems/nv_ram.py). PIN pass and PIN fail indices (Part 1 §37.2.5) count the uses of their
authValue (`count_pin_use`, from the dispatcher) in their TPMS_NV_PIN_COUNTER_PARAMETERS.
"""
import struct

from construct import Container

from ...crypto import hashes
from ...wire.constants import TPM_CC, TPM_RC, TPM_RH
from ...wire.nv import TPM_NT, TPMA_NV, PlainFlags, TPMS_NV_PUBLIC, nt_of
from . import nv_ram

A = PlainFlags(TPMA_NV)           # TPMA_NV bits as ints (see PlainFlags)

_PUBLIC_HEAD = struct.Struct(">IHIH")

# Commands that use an index's authorization to change it (the reference's IsWriteOperation)
WRITE_COMMANDS = frozenset((TPM_CC.NV_Write, TPM_CC.NV_Increment, TPM_CC.NV_SetBits,
                            TPM_CC.NV_Extend, TPM_CC.NV_WriteLock))


class NvIndex:
    __slots__ = ("handle", "public", "auth", "data")

    def __init__(self, handle, public, auth, data):
        self.handle = handle
        self.public = public          # Container of TPMS_NV_PUBLIC
        self.auth = auth
        self.data = data

    # item access: a construct Container's attribute access is a Python __getattr__ (~1 us),
    # and an NV_Write reads the attributes about ten times
    @property
    def attributes(self) -> int:
        return self.public["attributes"]

    @property
    def public_bytes(self) -> bytes:
        """TPMS_NV_PUBLIC packed by hand: building it with construct cost more than the
        rest of an NV_Write's authorization (the Name is needed twice per command)."""
        p = self.public
        policy = p["authPolicy"]
        return (_PUBLIC_HEAD.pack(p["nvIndex"], p["nameAlg"], p["attributes"], len(policy))
                + policy + p["dataSize"].to_bytes(2, "big"))

    @property
    def name(self) -> bytes:
        alg = self.public["nameAlg"]
        return alg.to_bytes(2, "big") + hashes.digest(alg, self.public_bytes)


def table(state) -> dict:
    return state.nv.setdefault("nv_indices", {})


def get(state, handle: int) -> NvIndex | None:
    """The index as it is now: an orderly one with its attributes and data from RAM."""
    entry = state.nv.get("nv_indices", {}).get(f"{handle:08x}")
    if entry is None:
        return None
    # parsing costs more than a whole NV_Write otherwise; callers change their copy
    cache = state.nv_public_cache
    parsed = cache.get(entry["public"])
    if parsed is None:
        if len(cache) > 4 * state.config.max_nv_indices:
            cache.clear()
        parsed = cache[entry["public"]] = TPMS_NV_PUBLIC.parse(bytes.fromhex(entry["public"]))
    public = Container(parsed)
    data = bytes.fromhex(entry["data"])
    ram = nv_ram.lookup(state, handle) if public["attributes"] & A.ORDERLY else None
    if ram is not None:
        public["attributes"], data = ram
    return NvIndex(handle, public, bytes.fromhex(entry["auth"]), data)


def peek(state, handle: int) -> NvIndex | None:
    """The index as `get` has it, for reading only: the caller must not change it (callers
    that change an index use `get`). Authorizing one NV command looks at its index five
    times or so; this keeps the last one per handle while its NV entry holds the very same
    strings (then `get` would build an equal one). Orderly indices (values in RAM) are
    built each time."""
    entry = state.nv.get("nv_indices", {}).get(f"{handle:08x}")
    if entry is None:
        return None
    cache = state.nv_peek_cache
    kept = cache.get(handle)
    if (kept is not None and kept[0] is entry["public"] and kept[1] is entry["auth"]
            and kept[2] is entry["data"]):
        return kept[3]
    index = get(state, handle)
    if not index.attributes & A.ORDERLY:
        if len(cache) > 4 * state.config.max_nv_indices:
            cache.clear()
        cache[handle] = (entry["public"], entry["auth"], entry["data"], index)
    return index


def save_nv(state, index: NvIndex):
    table(state)[f"{index.handle:08x}"] = {"public": index.public_bytes.hex(),
                                             "auth": index.auth.hex(),
                                             "data": index.data.hex()}
    state.dirty = True


def save(state, index: NvIndex):
    """Attributes and data back: to the NV image, or to RAM for an orderly index."""
    if index.attributes & A.ORDERLY:
        nv_ram.store(state, index.handle, index.attributes, index.data)
    else:
        save_nv(state, index)


def handles(state) -> list:
    return sorted(int(h, 16) for h in state.nv.get("nv_indices", {}))


def all_indices(state):
    return [get(state, h) for h in handles(state)]


def used_space(state) -> int:
    return sum(i.public.dataSize for i in all_indices(state))


def counters(state) -> int:
    return sum(1 for i in all_indices(state) if nt_of(i.attributes) == TPM_NT.COUNTER)


def accessible(state, handle: int) -> bool:
    """EntityGetLoadStatus of an NV index: defined, and its hierarchy enabled (phEnableNV
    for platform-created indices, shEnable for the owner's)."""
    index = peek(state, handle)
    if index is None:
        return False
    if index.attributes & A.PLATFORMCREATE:
        return state.ph_enable_nv
    return state.sh_enable


def startup(state, kind):
    """NvEntityStartup: orderly indices as last flushed to NV; then, at a TPM Reset or
    Restart (NvSetStartupAttributes), read locks go, a non-counter index with CLEAR_STCLEAR
    (or ORDERLY, at a TPM Reset) is unwritten again, write locks go except on a written
    WRITEDEFINE index, and after a disorderly shutdown orderly counters move on."""
    nv_ram.load(state)
    if kind == "resume":
        return
    for index in all_indices(state):
        a = index.attributes
        new = a & ~A.READLOCKED
        if nt_of(a) != TPM_NT.COUNTER and (a & A.CLEAR_STCLEAR
                                           or (a & A.ORDERLY and kind == "reset")):
            new &= ~A.WRITTEN
        if not new & A.WRITTEN or not new & A.WRITEDEFINE:
            new &= ~A.WRITELOCKED
        if new != a:
            index.public.attributes = int(new)
            save(state, index)
    if not state.orderly_startup:
        nv_ram.advance_counters(state)


def shutdown(state):
    """TPM2_Shutdown saves the orderly indices (NvUpdateIndexOrderlyData)."""
    nv_ram.flush(state)


def clear_owner(state):
    """TPM2_Clear: indices not created with platform authorization are deleted."""
    for index in all_indices(state):
        if not index.attributes & A.PLATFORMCREATE:
            delete(state, index)


def delete(state, index):
    if nt_of(index.attributes) == TPM_NT.COUNTER and index.attributes & A.WRITTEN:
        value = int.from_bytes(index.data, "big")
        if value > state.nv.get("nv_max_counter", 0):
            state.nv["nv_max_counter"] = value
    del table(state)[f"{index.handle:08x}"]
    state.dirty = True
    if nv_ram.drop(state, index.handle):
        nv_ram.flush(state)


# -- authorization helpers used by Tpm and ea ----------------------------------------------

PIN_TYPES = (TPM_NT.PIN_PASS, TPM_NT.PIN_FAIL)


def auth_value_refusal(index, code: int):
    """IsAuthValueAvailable for an index in the USER role. A PIN index (which cannot have
    AUTHWRITE) lends its authValue to commands that read, whatever AUTHREAD says, once
    written and while pinCount < pinLimit: a PIN fail index so stops a guessing attack, a
    PIN pass index limits the uses."""
    a = index.attributes
    if code in WRITE_COMMANDS:
        return None if a & A.AUTHWRITE else TPM_RC.AUTH_UNAVAILABLE
    if nt_of(a) in PIN_TYPES:
        if a & A.WRITTEN:
            count, limit = struct.unpack(">II", index.data)
            if count < limit:
                return None
        return TPM_RC.AUTH_UNAVAILABLE
    return None if a & A.AUTHREAD else TPM_RC.AUTH_UNAVAILABLE


def count_pin_use(state, handle: int, ok: bool):
    """The end of the reference's CheckAuthSession, for an index whose authValue a session
    used: a written PIN fail index counts a failure (and starts over at 0 on success), a
    written PIN pass index counts a success. The count is kept even if the command fails."""
    index = peek(state, handle)
    if (index is None or nt_of(index.attributes) not in PIN_TYPES
            or not index.attributes & A.WRITTEN):
        return
    index = get(state, handle)          # this one is changed below
    nt = nt_of(index.attributes)
    count, limit = struct.unpack(">II", index.data)
    if nt == TPM_NT.PIN_FAIL:
        count = 0 if ok else (count + 1) & 0xFFFFFFFF
    elif nt == TPM_NT.PIN_PASS and ok:
        count = (count + 1) & 0xFFFFFFFF
    else:
        return
    write_data(state, index, 0, struct.pack(">II", count, limit))


def policy_available(index, admin: bool, code: int) -> bool:
    """IsAuthPolicyAvailable for an index."""
    if admin:
        return True
    bit = A.POLICYWRITE if code in WRITE_COMMANDS else A.POLICYREAD
    return bool(index.attributes & bit)


# -- access checks and writes (the reference's NvReadAccessChecks, NvWriteAccessChecks) ---------



def read_refusal(auth_handle, index):
    """NvReadAccessChecks (also for NV_Certify and the NV policies): the TPM_RC that refuses
    reading the index with this authorization handle, or None."""
    a = index.attributes
    if a & A.READLOCKED:
        return TPM_RC.NV_LOCKED
    if auth_handle == TPM_RH.OWNER:
        if not a & A.OWNERREAD:
            return TPM_RC.NV_AUTHORIZATION
    elif auth_handle == TPM_RH.PLATFORM:
        if not a & A.PPREAD:
            return TPM_RC.NV_AUTHORIZATION
    elif auth_handle != index.handle:
        return TPM_RC.NV_AUTHORIZATION
    if not a & A.WRITTEN:
        return TPM_RC.NV_UNINITIALIZED
    return None


def write_checks(auth_handle, index):
    a = index.attributes
    if a & A.WRITELOCKED:
        return TPM_RC.NV_LOCKED
    if auth_handle == TPM_RH.OWNER:
        if not a & A.OWNERWRITE:
            return TPM_RC.NV_AUTHORIZATION
    elif auth_handle == TPM_RH.PLATFORM:
        if not a & A.PPWRITE:
            return TPM_RC.NV_AUTHORIZATION
    elif auth_handle != index.handle:
        return TPM_RC.NV_AUTHORIZATION
    return None




def range_refusal(index, offset: int, length: int):
    """NV_Write's rules for `length` bytes at `offset` of `index` (offset within the index
    already checked): None, or TPM_RC_NV_RANGE - past the end, or less than all of a
    TPMA_NV_WRITEALL index."""
    size = index.public["dataSize"]
    if length > size - offset or (index.attributes & A.WRITEALL and length < size):
        return TPM_RC.NV_RANGE
    return None


def write_data(state, index, offset, data):
    """NvWriteIndexData. The first write of an ordinary index starts from an erased index
    (0xFF in NV, zeros in RAM). An orderly index is written in RAM only, which makes the
    last shutdown disorderly; the first value of an orderly counter is flushed at once."""
    a = index.attributes
    if not a & A.WRITTEN:
        index.public["attributes"] = int(a | A.WRITTEN)
        size = index.public["dataSize"]
        if nt_of(a) == TPM_NT.ORDINARY and len(data) < size:
            index.data = (b"\0" if a & A.ORDERLY else b"\xff") * size
    buf = bytearray(index.data)
    buf[offset:offset + len(data)] = data
    index.data = bytes(buf)
    save(state, index)
    if a & A.ORDERLY:
        state.clear_orderly()
        if not a & A.WRITTEN and nt_of(a) == TPM_NT.COUNTER:
            nv_ram.flush(state)
