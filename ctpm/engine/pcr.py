"""Part 3 §22: integrity collection (PCR)."""
from construct import Container

from ..errors import TpmError
from ..wire.constants import TPM_RC, TPM_RH
from ..wire.structures import HASH_SIZES, IMPLEMENTATION_PCR
from ..crypto.hashes import HASH_NAMES, digest
from .state import PCR_ATTRIBUTES, PCR_NO_INCREMENT

MAX_PCR_READ = 8   # TPML_DIGEST holds at most 8 digests


def _check_extend(tpm, ctx, pcr):
    if not PCR_ATTRIBUTES[pcr][2] & (1 << ctx.locality):
        raise TpmError(TPM_RC.LOCALITY)
    if PCR_ATTRIBUTES[pcr][0]:
        tpm.state.clear_orderly()


def _changed(state, pcr):
    if pcr not in PCR_NO_INCREMENT:
        state.pcr_counter = (state.pcr_counter + 1) & 0xFFFFFFFF


def extend(state, pcr, alg, value):
    """Extend one bank; like the reference TPM, each bank extended counts as one change."""
    bank = state.pcrs.get(alg)
    if bank is not None:
        bank[pcr] = digest(alg, bank[pcr] + value)
        _changed(state, pcr)


def pcr_extend(tpm, ctx, pcr, digests):
    """Part 3 §22.4: extend each given bank; banks not allocated are ignored."""
    if pcr == TPM_RH.NULL:
        return
    _check_extend(tpm, ctx, pcr)
    state = tpm.state
    for d in digests:
        extend(state, pcr, d.hashAlg, d.digest)


def pcr_event(tpm, ctx, pcr, event_data):
    """Part 3 §22.5: digest the event with every implemented hash, extend the allocated ones."""
    if pcr != TPM_RH.NULL:
        _check_extend(tpm, ctx, pcr)
    state = tpm.state
    out = []
    for alg in HASH_NAMES:
        d = digest(alg, event_data)
        out.append(Container(hashAlg=alg, digest=d))
        if pcr != TPM_RH.NULL:
            extend(state, pcr, alg, d)
    return (out,)


def pcr_read(tpm, ctx, selection):
    """Part 3 §22.6: unallocated banks and PCRs are deselected; at most 8 values are
    returned and the output selection says which."""
    state = tpm.state
    values = []
    out_sel = []
    full = False
    for sel in selection:
        bank = state.pcrs.get(sel.hash)
        bits = bytearray(sel.pcrSelect)
        for pcr in range(len(bits) * 8):
            byte, bit = divmod(pcr, 8)
            if not bits[byte] & (1 << bit):
                continue
            if bank is None or pcr >= IMPLEMENTATION_PCR or full:
                bits[byte] &= ~(1 << bit)
                continue
            if len(values) == MAX_PCR_READ:
                full = True
                bits[byte] &= ~(1 << bit)
                continue
            values.append(bank[pcr])
        out_sel.append(Container(hash=sel.hash, pcrSelect=bytes(bits)))
    return (state.pcr_counter, out_sel, values)


def pcr_reset(tpm, ctx, pcr):
    """Part 3 §22.8: only PCRs whose reset-locality includes the command's locality
    (never at locality 4, which belongs to D-RTM)."""
    if ctx.locality == 4 or not PCR_ATTRIBUTES[pcr][1] & (1 << ctx.locality):
        raise TpmError(TPM_RC.LOCALITY)
    if PCR_ATTRIBUTES[pcr][0]:
        tpm.state.clear_orderly()
    state = tpm.state
    for alg, bank in state.pcrs.items():
        bank[pcr] = b"\0" * HASH_SIZES[alg]
    _changed(state, pcr)
