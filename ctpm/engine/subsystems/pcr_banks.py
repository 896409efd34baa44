"""The PCR banks: which PCRs a TPM has and how they behave (the platform's attribute table,
the policy and auth groups), the allocation kept in the NV image, and the two operations the
command chapters share: extend one bank, filter a TPML_PCR_SELECTION down to allocated PCRs.

The values live in `TpmState.pcrs` ({bank: [24 values or None]}); PCR commands are in
engine/commands/pcr.py.
"""
from construct import Container

from ...crypto.hashes import digest
from ...errors import TpmError
from ...wire.constants import TPM_RC
from ...wire.structures import IMPLEMENTATION_PCR

# PC Client PCR attributes (as in the reference TPM's platform table):
# (state saved by Shutdown(STATE), reset-locality bitmap, extend-locality bitmap)
PCR_ATTRIBUTES = tuple([(True, 0x00, 0x1F)] * 16 + [
    (False, 0x0F, 0x1F),  # 16 debug
    (False, 0x10, 0x1C),  # 17 D-RTM, locality 4
    (False, 0x10, 0x1C),  # 18 locality 3
    (False, 0x10, 0x0C),  # 19 locality 2
    (False, 0x14, 0x0E),  # 20 locality 1
    (False, 0x14, 0x04),  # 21 dynamic OS
    (False, 0x14, 0x04),  # 22 dynamic OS
    (False, 0x0F, 0x1F),  # 23 application
])
# PCRs whose changes do not bump pcrUpdateCounter (PC Client: 16 and 21-23, as libtpms).
PCR_NO_INCREMENT = frozenset((16, 21, 22, 23))
# The one policy group and the one authValue group of PCRs (the reference TPM and libtpms:
# PCRBelongsPolicyGroup / PCRBelongsAuthGroup, both PCR 20-22, group index 0).
PCR_POLICY_GROUP = frozenset((20, 21, 22))
PCR_AUTH_GROUP = frozenset((20, 21, 22))
ALL_PCRS = (1 << IMPLEMENTATION_PCR) - 1


def pcr_allocation(entries) -> dict:
    """{hash algorithm: bitmap of its allocated PCRs} from the NV image's pcr_allocated or
    pcr_pending: algorithms (whole banks, as manufactured) or [algorithm, bitmap] pairs
    (PCR_Allocate may leave a bank only some PCRs). Banks without a PCR are left out."""
    out = {}
    for entry in entries:
        alg, bits = (entry, ALL_PCRS) if isinstance(entry, int) else entry
        if bits:
            out[int(alg)] = int(bits)
    return out


def check_extend(tpm, ctx, pcr):
    """May this command's locality extend the PCR? A PCR saved by Shutdown(STATE) that
    changes ends an orderly state."""
    if not PCR_ATTRIBUTES[pcr][2] & (1 << ctx.locality):
        raise TpmError(TPM_RC.LOCALITY)
    if PCR_ATTRIBUTES[pcr][0]:
        tpm.state.clear_orderly()


def count_change(state, pcr):
    if pcr not in PCR_NO_INCREMENT:
        state.pcr_counter = (state.pcr_counter + 1) & 0xFFFFFFFF


def extend(state, pcr, alg, value):
    """Extend one bank (if the PCR is allocated in it); like the reference TPM, each bank
    extended counts as one change."""
    bank = state.pcrs.get(alg)
    if bank is not None and bank[pcr] is not None:
        bank[pcr] = digest(alg, bank[pcr] + value)
        count_change(state, pcr)


def filter_selection(state, selection, limit=None):
    """The reference's FilterPcr over a TPML_PCR_SELECTION: bits of PCRs that are not
    allocated (or not implemented) are cleared, the banks keep their place. Returns the
    filtered selection and the selected PCR values in order (TPM2_Quote's pcrDigest input);
    with a `limit`, the PCRs past the first `limit` values are deselected too (PCR_Read)."""
    out_sel, values = [], []
    for sel in selection:
        bank = state.pcrs.get(sel.hash)
        bits = bytearray(sel.pcrSelect)
        for pcr in range(len(bits) * 8):
            byte, bit = divmod(pcr, 8)
            if not bits[byte] & (1 << bit):
                continue
            if (bank is None or pcr >= IMPLEMENTATION_PCR or bank[pcr] is None
                    or len(values) == limit):
                bits[byte] &= ~(1 << bit)
            else:
                values.append(bank[pcr])
        out_sel.append(Container(hash=sel.hash, pcrSelect=bytes(bits)))
    return out_sel, values
