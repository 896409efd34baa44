"""Part 3 §31: NV storage - indices kept in the NV image (state.nv["nv_indices"]).

Each index is stored as {"public": TPMS_NV_PUBLIC hex (its attributes carry WRITTEN and the
locks), "auth": authValue hex, "data": contents hex}. The checks follow the reference TPM's
NvDefineSpace, NvReadAccessChecks and NvWriteAccessChecks, in its order. The attributes and
data of an orderly index (TPMA_NV_ORDERLY) live in RAM and reach the image only now and then
(engine/nv_ram.py). PIN pass and PIN fail indices (Part 1 §37.2.5) count the uses of their
authValue (`count_pin_use`, from the dispatcher) in their TPMS_NV_PIN_COUNTER_PARAMETERS.
"""
import struct

from construct import Container

from ..crypto import hashes
from ..errors import TpmError
from ..wire.constants import TPM_CC, TPM_RC, TPM_RH
from ..wire.nv import TPM_NT, TPMA_NV as A, TPMS_NV_PUBLIC, nt_of
from ..wire.structures import HASH_SIZES, MAX_NV_BUFFER_SIZE
from . import nv_ram

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

    @property
    def attributes(self) -> int:
        return self.public.attributes

    @property
    def public_bytes(self) -> bytes:
        return TPMS_NV_PUBLIC.build(self.public)

    @property
    def name(self) -> bytes:
        alg = self.public.nameAlg
        return alg.to_bytes(2, "big") + hashes.digest(alg, self.public_bytes)


def _table(state) -> dict:
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
    ram = nv_ram.lookup(state, handle) if public.attributes & A.ORDERLY else None
    if ram is not None:
        public.attributes, data = ram
    return NvIndex(handle, public, bytes.fromhex(entry["auth"]), data)


def _save_nv(state, index: NvIndex):
    _table(state)[f"{index.handle:08x}"] = {"public": index.public_bytes.hex(),
                                             "auth": index.auth.hex(),
                                             "data": index.data.hex()}
    state.dirty = True


def _save(state, index: NvIndex):
    """Attributes and data back: to the NV image, or to RAM for an orderly index."""
    if index.attributes & A.ORDERLY:
        nv_ram.store(state, index.handle, index.attributes, index.data)
    else:
        _save_nv(state, index)


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
    index = get(state, handle)
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
            _save(state, index)
    if not state.orderly_startup:
        nv_ram.advance_counters(state)


def shutdown(state):
    """TPM2_Shutdown saves the orderly indices (NvUpdateIndexOrderlyData)."""
    nv_ram.flush(state)


def clear_owner(state):
    """TPM2_Clear: indices not created with platform authorization are deleted."""
    for index in all_indices(state):
        if not index.attributes & A.PLATFORMCREATE:
            _delete(state, index)


def _delete(state, index):
    if nt_of(index.attributes) == TPM_NT.COUNTER and index.attributes & A.WRITTEN:
        value = int.from_bytes(index.data, "big")
        if value > state.nv.get("nv_max_counter", 0):
            state.nv["nv_max_counter"] = value
    del _table(state)[f"{index.handle:08x}"]
    state.dirty = True
    if nv_ram.drop(state, index.handle):
        nv_ram.flush(state)


# -- authorization helpers used by Tpm and ea ----------------------------------------------

_PIN_TYPES = (TPM_NT.PIN_PASS, TPM_NT.PIN_FAIL)


def auth_value_refusal(index, code: int):
    """IsAuthValueAvailable for an index in the USER role. A PIN index (which cannot have
    AUTHWRITE) lends its authValue to commands that read, whatever AUTHREAD says, once
    written and while pinCount < pinLimit: a PIN fail index so stops a guessing attack, a
    PIN pass index limits the uses."""
    a = index.attributes
    if code in WRITE_COMMANDS:
        return None if a & A.AUTHWRITE else TPM_RC.AUTH_UNAVAILABLE
    if nt_of(a) in _PIN_TYPES:
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
    index = get(state, handle)
    if (index is None or nt_of(index.attributes) not in _PIN_TYPES
            or not index.attributes & A.WRITTEN):
        return
    nt = nt_of(index.attributes)
    count, limit = struct.unpack(">II", index.data)
    if nt == TPM_NT.PIN_FAIL:
        count = 0 if ok else (count + 1) & 0xFFFFFFFF
    elif nt == TPM_NT.PIN_PASS and ok:
        count = (count + 1) & 0xFFFFFFFF
    else:
        return
    _write_data(state, index, 0, struct.pack(">II", count, limit))


def policy_available(index, admin: bool, code: int) -> bool:
    """IsAuthPolicyAvailable for an index."""
    if admin:
        return True
    bit = A.POLICYWRITE if code in WRITE_COMMANDS else A.POLICYREAD
    return bool(index.attributes & bit)


# -- checks ---------------------------------------------------------------------------------

def _nv_available(tpm):
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)


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


def _write_checks(auth_handle, index):
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


def _raise(rc):
    if rc is not None:
        raise TpmError(rc)


def _write_data(state, index, offset, data):
    """NvWriteIndexData. The first write of an ordinary index starts from an erased index
    (0xFF in NV, zeros in RAM). An orderly index is written in RAM only, which makes the
    last shutdown disorderly; the first value of an orderly counter is flushed at once."""
    a = index.attributes
    if not a & A.WRITTEN:
        index.public.attributes = int(a | A.WRITTEN)
        if nt_of(a) == TPM_NT.ORDINARY and len(data) < index.public.dataSize:
            index.data = (b"\0" if a & A.ORDERLY else b"\xff") * index.public.dataSize
    buf = bytearray(index.data)
    buf[offset:offset + len(data)] = data
    index.data = bytes(buf)
    _save(state, index)
    if a & A.ORDERLY:
        state.clear_orderly()
        if not a & A.WRITTEN and nt_of(a) == TPM_NT.COUNTER:
            nv_ram.flush(state)


def _nv_available_for(tpm, index):
    """NV must be available to change an index, unless the change stays in RAM."""
    if not index.attributes & A.ORDERLY:
        _nv_available(tpm)


# -- commands -------------------------------------------------------------------------------

def nv_define_space(tpm, ctx, auth_handle, auth, public_info):
    """Part 3 §31.3 (NvDefineSpace)."""
    state = tpm.state
    a = public_info.attributes
    name_size = HASH_SIZES[public_info.nameAlg]
    nt = nt_of(a)
    if len(public_info.authPolicy) not in (0, name_size):
        raise TpmError(TPM_RC.SIZE, param=2)
    if len(auth.rstrip(b"\0")) > name_size:
        raise TpmError(TPM_RC.SIZE, param=1)
    if auth_handle == TPM_RH.PLATFORM and not state.ph_enable_nv:
        raise TpmError(TPM_RC.HIERARCHY, handle=1)
    if nt not in (TPM_NT.ORDINARY, TPM_NT.COUNTER, TPM_NT.BITS, TPM_NT.EXTEND) + _PIN_TYPES:
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    size = public_info.dataSize
    if nt == TPM_NT.ORDINARY:
        if size > tpm.config.max_nv_index_size:
            raise TpmError(TPM_RC.SIZE, param=2)
    elif nt == TPM_NT.EXTEND:
        if size != name_size:
            raise TpmError(TPM_RC.SIZE, param=2)
    elif size != 8:
        raise TpmError(TPM_RC.SIZE, param=2)
    if nt == TPM_NT.COUNTER and a & A.CLEAR_STCLEAR:
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    # a PIN fail index is outside DA (it is its own lockout); a PIN index's authValue
    # cannot write it (it becomes usable only once written) and no lock may freeze it
    if nt == TPM_NT.PIN_FAIL and not a & A.NO_DA:
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    if nt in _PIN_TYPES and a & (A.AUTHWRITE | A.GLOBALLOCK | A.WRITEDEFINE):
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    if a & (A.WRITTEN | A.WRITELOCKED | A.READLOCKED):
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    if not a & (A.OWNERREAD | A.PPREAD | A.AUTHREAD | A.POLICYREAD):
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    if not a & (A.OWNERWRITE | A.PPWRITE | A.AUTHWRITE | A.POLICYWRITE):
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    if a & A.CLEAR_STCLEAR and a & A.WRITEDEFINE:
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    if bool(a & A.PLATFORMCREATE) != (auth_handle == TPM_RH.PLATFORM):
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    if a & A.POLICY_DELETE and not a & A.PLATFORMCREATE:
        # only the platform may make an index that its policy alone can delete
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    if size > MAX_NV_BUFFER_SIZE and a & A.WRITEALL:
        raise TpmError(TPM_RC.SIZE, param=2)
    if get(state, public_info.nvIndex) is not None:
        raise TpmError(TPM_RC.NV_DEFINED)
    _nv_available(tpm)
    if (used_space(state) + size > tpm.config.nv_space
            or len(handles(state)) >= tpm.config.max_nv_indices):
        raise TpmError(TPM_RC.NV_SPACE)
    # an ordinary index reads 0xFF where not written; the others are written whole, but for
    # a PIN index written in part, whose rest libtpms has as zeros in a fresh NV
    fill = b"\xff" if nt == TPM_NT.ORDINARY else b"\0"
    index = NvIndex(public_info.nvIndex, public_info, auth.rstrip(b"\0"), fill * size)
    index.public.attributes = int(a)
    _save_nv(state, index)
    if a & A.ORDERLY:          # NvAddRAM: zeroed data in RAM, and all of RAM to NV
        nv_ram.store(state, index.handle, a, bytes(size))
        nv_ram.flush(state)


def nv_undefine_space(tpm, ctx, auth_handle, nv_index):
    """Part 3 §31.4."""
    state = tpm.state
    index = get(state, nv_index)
    if index.attributes & A.POLICY_DELETE:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    if auth_handle == TPM_RH.OWNER and index.attributes & A.PLATFORMCREATE:
        raise TpmError(TPM_RC.NV_AUTHORIZATION)
    _nv_available(tpm)
    _delete(state, index)


def nv_undefine_space_special(tpm, ctx, nv_index, platform):
    """Part 3 §31.5: delete a POLICY_DELETE index with its policy (ADMIN role) and
    platform authorization together."""
    index = get(tpm.state, nv_index)
    if not index.attributes & A.POLICY_DELETE:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    _nv_available(tpm)
    _delete(tpm.state, index)


def nv_read_public(tpm, ctx, nv_index):
    """Part 3 §31.6."""
    index = get(tpm.state, nv_index)
    return index.public, index.name


def nv_write(tpm, ctx, auth_handle, nv_index, data, offset):
    """Part 3 §31.7."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(_write_checks(auth_handle, index))
    if nt_of(index.attributes) in (TPM_NT.COUNTER, TPM_NT.BITS, TPM_NT.EXTEND):
        raise TpmError(TPM_RC.ATTRIBUTES)      # (PIN indices are set with NV_Write)
    size = index.public.dataSize
    if offset > size:
        raise TpmError(TPM_RC.VALUE, param=2)
    if len(data) > size - offset:
        raise TpmError(TPM_RC.NV_RANGE)
    if index.attributes & A.WRITEALL and len(data) < size:
        raise TpmError(TPM_RC.NV_RANGE)
    _nv_available_for(tpm, index)
    _write_data(state, index, offset, data)


def nv_increment(tpm, ctx, auth_handle, nv_index):
    """Part 3 §31.8."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(_write_checks(auth_handle, index))
    if nt_of(index.attributes) != TPM_NT.COUNTER:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    written = index.attributes & A.WRITTEN
    if written:
        value = int.from_bytes(index.data, "big")
    else:
        value = state.nv.get("nv_max_counter", 0)
    value = (value + 1) & 0xFFFFFFFFFFFFFFFF
    # an orderly counter goes to NV when first written and when its low bits roll over
    rollover = index.attributes & A.ORDERLY and value & nv_ram.MAX_ORDERLY_COUNT == 0
    if rollover or not written:
        _nv_available(tpm)
    else:
        _nv_available_for(tpm, index)
    _write_data(state, index, 0, value.to_bytes(8, "big"))
    if rollover:
        nv_ram.flush(state)


def nv_extend(tpm, ctx, auth_handle, nv_index, data):
    """Part 3 §31.9."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(_write_checks(auth_handle, index))
    if nt_of(index.attributes) != TPM_NT.EXTEND:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    alg = index.public.nameAlg
    old = index.data if index.attributes & A.WRITTEN else bytes(HASH_SIZES[alg])
    _nv_available_for(tpm, index)
    _write_data(state, index, 0, hashes.digest(alg, old + data))


def nv_set_bits(tpm, ctx, auth_handle, nv_index, bits):
    """Part 3 §31.10."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(_write_checks(auth_handle, index))
    if nt_of(index.attributes) != TPM_NT.BITS:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    old = int.from_bytes(index.data, "big") if index.attributes & A.WRITTEN else 0
    _nv_available_for(tpm, index)
    _write_data(state, index, 0, (old | bits).to_bytes(8, "big"))


def nv_write_lock(tpm, ctx, auth_handle, nv_index):
    """Part 3 §31.11: already locked (or otherwise not writable) is success."""
    state = tpm.state
    index = get(state, nv_index)
    rc = _write_checks(auth_handle, index)
    if rc is not None:
        if rc == TPM_RC.NV_AUTHORIZATION:
            raise TpmError(rc)
        return
    a = index.attributes
    if not a & (A.WRITEDEFINE | A.WRITE_STCLEAR):
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    _nv_available_for(tpm, index)
    index.public.attributes = int(a | A.WRITELOCKED)
    _save(state, index)


def nv_global_write_lock(tpm, ctx, auth_handle):
    """Part 3 §31.12 (NvSetGlobalLock): every index with GLOBALLOCK is write locked."""
    state = tpm.state
    _nv_available(tpm)
    for index in all_indices(state):
        if index.attributes & A.GLOBALLOCK:
            index.public.attributes = int(index.attributes | A.WRITELOCKED)
            _save(state, index)


def nv_read(tpm, ctx, auth_handle, nv_index, size, offset):
    """Part 3 §31.13."""
    index = get(tpm.state, nv_index)
    _raise(read_refusal(auth_handle, index))
    if size > MAX_NV_BUFFER_SIZE:
        raise TpmError(TPM_RC.VALUE, param=1)
    if offset > index.public.dataSize:
        raise TpmError(TPM_RC.VALUE, param=2)
    if size > index.public.dataSize - offset:
        raise TpmError(TPM_RC.NV_RANGE)
    return (index.data[offset:offset + size],)


def nv_read_lock(tpm, ctx, auth_handle, nv_index):
    """Part 3 §31.14."""
    state = tpm.state
    index = get(state, nv_index)
    rc = read_refusal(auth_handle, index)
    if rc == TPM_RC.NV_AUTHORIZATION:
        raise TpmError(rc)
    if rc == TPM_RC.NV_LOCKED:
        return
    a = index.attributes
    if not a & A.READ_STCLEAR:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    _nv_available_for(tpm, index)
    index.public.attributes = int(a | A.READLOCKED)
    _save(state, index)


def nv_change_auth(tpm, ctx, nv_index, new_auth):
    """Part 3 §31.15 (the ADMIN role: a policy session with PolicyCommandCode)."""
    state = tpm.state
    index = get(state, nv_index)
    if len(new_auth.rstrip(b"\0")) > HASH_SIZES[index.public.nameAlg]:
        raise TpmError(TPM_RC.SIZE, param=1)
    _nv_available(tpm)
    # the authValue is kept in NV, orderly index or not (NvWriteIndexAuth)
    _table(state)[f"{index.handle:08x}"]["auth"] = new_auth.rstrip(b"\0").hex()
    state.dirty = True

