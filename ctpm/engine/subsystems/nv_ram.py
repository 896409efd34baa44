"""Orderly NV indices (TPMA_NV_ORDERLY) kept in RAM, as the reference TPM's s_indexOrderlyRam.

The attributes and data of an orderly index live in `state.nv_ram` ({handle hex: [attributes,
data]}); the NV image holds the copy last flushed. `flush` (NvUpdateIndexOrderlyData) copies
every orderly index at once, and runs only at TPM2_Shutdown, when an orderly index is defined
or deleted, at the first NV_Increment of an orderly counter and when a counter's low
ORDERLY_BITS roll over. Everything else costs no write of the NV image; after a disorderly
shutdown it is lost, and `startup` moves orderly counters past any value they may have
reached since their last flush.
"""
from ...wire.nv import TPM_NT, TPMA_NV as A, TPMS_NV_PUBLIC, nt_of

ORDERLY_BITS = 8                         # the reference's (and libtpms') TpmProfile.h
MAX_ORDERLY_COUNT = (1 << ORDERLY_BITS) - 1


def key(handle: int) -> str:
    return f"{handle:08x}"


def _public(entry):
    return TPMS_NV_PUBLIC.parse(bytes.fromhex(entry["public"]))


def load(state):
    """RAM as it was last flushed (NvEntityStartup restores it at every Startup)."""
    state.nv_ram = {}
    for k, entry in state.nv.get("nv_indices", {}).items():
        attributes = _public(entry).attributes
        if attributes & A.ORDERLY:
            state.nv_ram[k] = [int(attributes), bytes.fromhex(entry["data"])]


def lookup(state, handle: int):
    """[attributes, data] of an orderly index in RAM, or None (not loaded yet)."""
    return state.nv_ram.get(key(handle))


def store(state, handle: int, attributes: int, data: bytes):
    """Change an orderly index in RAM only (NvWriteRamIndexAttributes / NvWriteIndexData)."""
    state.nv_ram[key(handle)] = [int(attributes), bytes(data)]


def drop(state, handle: int) -> bool:
    """Forget a deleted orderly index (NvDeleteRAM); True if it was in RAM."""
    return state.nv_ram.pop(key(handle), None) is not None


def flush(state):
    """NvUpdateIndexOrderlyData: every orderly index's RAM copy into the NV image."""
    table = state.nv.get("nv_indices", {})
    for k, (attributes, data) in state.nv_ram.items():
        entry = table.get(k)
        if entry is None:
            continue
        public = _public(entry)
        public.attributes = attributes
        entry["public"] = TPMS_NV_PUBLIC.build(public).hex()
        entry["data"] = data.hex()
    state.dirty = True            # the image is written only if it changed


def advance_counters(state):
    """After a disorderly shutdown, every orderly counter's low ORDERLY_BITS are set
    (NvEntityStartup), in RAM only: the next NV_Increment rolls them over and flushes, so
    a counter never repeats a value it may have shown before the power was lost."""
    for entry in state.nv_ram.values():
        if nt_of(entry[0]) == TPM_NT.COUNTER:
            value = int.from_bytes(entry[1], "big") | MAX_ORDERLY_COUNT
            entry[1] = value.to_bytes(8, "big")
