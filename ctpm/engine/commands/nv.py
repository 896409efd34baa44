"""Part 3 §31: NV storage. The indices themselves - how they are kept, read, written and
checked - are engine/subsystems/nv_indices.py; this module is the commands, in the order of the
reference's checks (NvDefineSpace, ...).
"""
from ...crypto import hashes
from ...errors import TpmError
from ...wire.constants import TPM_RC, TPM_RH
from ...wire.nv import TPM_NT, TPMA_NV, PlainFlags, nt_of
from ...wire.structures import HASH_SIZES
from ..subsystems import nv_ram
from ..subsystems.nv_indices import (PIN_TYPES, NvIndex, all_indices, delete, get, handles,
                                   range_refusal, read_refusal, save, save_nv, table,
                                   used_space, write_checks,
                                   write_data)

A = PlainFlags(TPMA_NV)           # TPMA_NV bits as ints (see PlainFlags)


def _nv_available(tpm):
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)


def _raise(rc):
    if rc is not None:
        raise TpmError(rc)


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
    if nt not in (TPM_NT.ORDINARY, TPM_NT.COUNTER, TPM_NT.BITS, TPM_NT.EXTEND) + PIN_TYPES:
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
    if nt in PIN_TYPES and a & (A.AUTHWRITE | A.GLOBALLOCK | A.WRITEDEFINE):
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
    if size > tpm.config.nv_buffer_max and a & A.WRITEALL:
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
    save_nv(state, index)
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
    delete(state, index)


def nv_undefine_space_special(tpm, ctx, nv_index, platform):
    """Part 3 §31.5: delete a POLICY_DELETE index with its policy (ADMIN role) and
    platform authorization together."""
    index = get(tpm.state, nv_index)
    if not index.attributes & A.POLICY_DELETE:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    _nv_available(tpm)
    delete(tpm.state, index)


def nv_read_public(tpm, ctx, nv_index):
    """Part 3 §31.6."""
    index = get(tpm.state, nv_index)
    return index.public, index.name


def nv_write(tpm, ctx, auth_handle, nv_index, data, offset):
    """Part 3 §31.7."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(write_checks(auth_handle, index))
    if nt_of(index.attributes) in (TPM_NT.COUNTER, TPM_NT.BITS, TPM_NT.EXTEND):
        raise TpmError(TPM_RC.ATTRIBUTES)      # (PIN indices are set with NV_Write)
    if offset > index.public["dataSize"]:
        raise TpmError(TPM_RC.VALUE, param=2)
    _raise(range_refusal(index, offset, len(data)))
    _nv_available_for(tpm, index)
    write_data(state, index, offset, data)


def nv_increment(tpm, ctx, auth_handle, nv_index):
    """Part 3 §31.8."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(write_checks(auth_handle, index))
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
    write_data(state, index, 0, value.to_bytes(8, "big"))
    if rollover:
        nv_ram.flush(state)


def nv_extend(tpm, ctx, auth_handle, nv_index, data):
    """Part 3 §31.9."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(write_checks(auth_handle, index))
    if nt_of(index.attributes) != TPM_NT.EXTEND:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    alg = index.public.nameAlg
    old = index.data if index.attributes & A.WRITTEN else bytes(HASH_SIZES[alg])
    _nv_available_for(tpm, index)
    write_data(state, index, 0, hashes.digest(alg, old + data))


def nv_set_bits(tpm, ctx, auth_handle, nv_index, bits):
    """Part 3 §31.10."""
    state = tpm.state
    index = get(state, nv_index)
    _raise(write_checks(auth_handle, index))
    if nt_of(index.attributes) != TPM_NT.BITS:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    old = int.from_bytes(index.data, "big") if index.attributes & A.WRITTEN else 0
    _nv_available_for(tpm, index)
    write_data(state, index, 0, (old | bits).to_bytes(8, "big"))


def nv_write_lock(tpm, ctx, auth_handle, nv_index):
    """Part 3 §31.11: already locked (or otherwise not writable) is success."""
    state = tpm.state
    index = get(state, nv_index)
    rc = write_checks(auth_handle, index)
    if rc is not None:
        if rc == TPM_RC.NV_AUTHORIZATION:
            raise TpmError(rc)
        return
    a = index.attributes
    if not a & (A.WRITEDEFINE | A.WRITE_STCLEAR):
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    _nv_available_for(tpm, index)
    index.public.attributes = int(a | A.WRITELOCKED)
    save(state, index)


def nv_global_write_lock(tpm, ctx, auth_handle):
    """Part 3 §31.12 (NvSetGlobalLock): every index with GLOBALLOCK is write locked."""
    state = tpm.state
    _nv_available(tpm)
    for index in all_indices(state):
        if index.attributes & A.GLOBALLOCK:
            index.public.attributes = int(index.attributes | A.WRITELOCKED)
            save(state, index)


def nv_read(tpm, ctx, auth_handle, nv_index, size, offset):
    """Part 3 §31.13."""
    index = get(tpm.state, nv_index)
    _raise(read_refusal(auth_handle, index))
    if size > tpm.config.nv_buffer_max:
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
    save(state, index)


def nv_change_auth(tpm, ctx, nv_index, new_auth):
    """Part 3 §31.15 (the ADMIN role: a policy session with PolicyCommandCode)."""
    state = tpm.state
    index = get(state, nv_index)
    if len(new_auth.rstrip(b"\0")) > HASH_SIZES[index.public.nameAlg]:
        raise TpmError(TPM_RC.SIZE, param=1)
    _nv_available(tpm)
    # the authValue is kept in NV, orderly index or not (NvWriteIndexAuth)
    table(state)[f"{index.handle:08x}"]["auth"] = new_auth.rstrip(b"\0").hex()
    state.dirty = True

