"""Part 3 §22: integrity collection (PCR)."""
from construct import Container

from ...errors import TpmError
from ...wire.constants import TPM_RC, TPM_RH
from ...wire.structures import HASH_SIZES, IMPLEMENTATION_PCR, PCR_HASHES
from ...crypto.hashes import digest
from ..subsystems.pcr_banks import (ALL_PCRS, PCR_ATTRIBUTES, PCR_AUTH_GROUP,
                                    PCR_POLICY_GROUP, count_change, check_extend, extend,
                                    filter_selection, pcr_allocation)

MAX_PCR_READ = 8   # TPML_DIGEST holds at most 8 digests


def pcr_extend(tpm, ctx, pcr, digests):
    """Part 3 §22.4: extend each given bank; banks (or PCRs of a bank) not allocated are
    ignored."""
    if pcr == TPM_RH.NULL:
        return
    check_extend(tpm, ctx, pcr)
    state = tpm.state
    for d in digests:
        extend(state, pcr, d.hashAlg, d.digest)


def pcr_event(tpm, ctx, pcr, event_data):
    """Part 3 §22.5: digest the event with every implemented hash, extend the allocated ones."""
    if pcr != TPM_RH.NULL:
        check_extend(tpm, ctx, pcr)
    state = tpm.state
    out = []
    for alg in PCR_HASHES:      # every hash that can be a bank (not SM3_256)
        d = digest(alg, event_data)
        out.append(Container(hashAlg=alg, digest=d))
        if pcr != TPM_RH.NULL:
            extend(state, pcr, alg, d)
    return (out,)


def pcr_read(tpm, ctx, selection):
    """Part 3 §22.6: unallocated banks and PCRs are deselected; at most 8 values are
    returned and the output selection says which."""
    out_sel, values = filter_selection(tpm.state, selection, MAX_PCR_READ)
    return (tpm.state.pcr_counter, out_sel, values)


def pcr_reset(tpm, ctx, pcr):
    """Part 3 §22.8: only PCRs whose reset-locality includes the command's locality
    (never at locality 4, which belongs to D-RTM)."""
    if ctx.locality == 4 or not PCR_ATTRIBUTES[pcr][1] & (1 << ctx.locality):
        raise TpmError(TPM_RC.LOCALITY)
    if PCR_ATTRIBUTES[pcr][0]:
        tpm.state.clear_orderly()
    state = tpm.state
    for alg, bank in state.pcrs.items():
        if bank[pcr] is not None:
            bank[pcr] = b"\0" * HASH_SIZES[alg]
    count_change(state, pcr)


# -- Part 3 §22.3, §22.7, §22.9: PCR administration -------------------------------------------

def pcr_allocate(tpm, ctx, auth_handle, allocation):
    """Part 3 §22.3 (the reference's PCRAllocate): banks not named keep their allocation,
    a bank named twice takes the last (a second PCR_Allocate replaces the first), and a
    bank may hold only some of its PCRs; some bank must hold the H-CRTM PCR 0 and the D-RTM
    PCR 17 (TPM_RC_PCR). The new allocation is kept in NV and used from the next TPM Reset;
    until then Shutdown(STATE) is refused (g_pcrReConfig). A hash without a bank (SM3_256)
    can only be given no PCRs, else allocationSuccess is NO and nothing changes."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    state = tpm.state
    # as the reference: from the allocation in use (not one still pending)
    new = dict.fromkeys(PCR_HASHES, 0)
    new.update(pcr_allocation(state.nv["pcr_allocated"]))
    for sel in allocation:
        new[int(sel.hash)] = int.from_bytes(bytes(sel.pcrSelect), "little")
    size_needed = sum(HASH_SIZES[alg] * bin(bits).count("1") for alg, bits in new.items())
    if not any(bits & 1 for bits in new.values()) or not any(bits >> 17 & 1
                                                             for bits in new.values()):
        raise TpmError(TPM_RC.PCR)
    size_available = IMPLEMENTATION_PCR * sum(HASH_SIZES[alg] for alg in PCR_HASHES)
    success = all(alg in PCR_HASHES or not bits for alg, bits in new.items())
    if success:
        state.nv["pcr_pending"] = [[int(alg), new[alg] & ALL_PCRS] for alg in PCR_HASHES
                                   if new[alg] & ALL_PCRS]
        state.pcr_reconfig = True
        state.dirty = True
    return (int(success), IMPLEMENTATION_PCR, size_needed, size_available)


def pcr_set_auth_policy(tpm, ctx, auth_handle, auth_policy, hash_alg, pcr_num):
    """Part 3 §22.7: the authPolicy of the policy group pcrNum belongs to (persistent)."""
    if len(auth_policy) != HASH_SIZES.get(hash_alg, 0):
        raise TpmError(TPM_RC.SIZE, param=1)
    if pcr_num not in PCR_POLICY_GROUP:
        raise TpmError(TPM_RC.VALUE, param=3)
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    tpm.state.nv["pcr_policy"] = [int(hash_alg), bytes(auth_policy).hex()]
    tpm.state.dirty = True


def pcr_set_auth_value(tpm, ctx, pcr, auth):
    """Part 3 §22.9: the authValue of the authValue group pcrHandle belongs to (state-clear
    data: it survives Shutdown(STATE)/Startup(STATE) only); trailing zeros are dropped."""
    if pcr not in PCR_AUTH_GROUP:
        raise TpmError(TPM_RC.VALUE)
    state = tpm.state
    state.clear_orderly()
    state.pcr_auth = bytes(auth).rstrip(b"\0")
    state.dirty = True
