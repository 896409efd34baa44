"""Part 3 §30: TPM2_GetCapability and TPM2_TestParms.

Every answer is computed from what the engine really implements (the command table, the
hash table, the allocated banks), so GetCapability cannot claim what ctpm does not do.
"""
from construct import Container

from ...errors import TpmError
from ...wire import structures as S
from ...wire.constants import (TPM_ALG, TPM_CAP, TPM_HT, TPM_PT, TPM_PT_PCR, TPM_RC, TPM_RH,
                              TPMA_ALGORITHM as A, TPMA_MODES, TPMA_PERMANENT,
                              TPMA_STARTUP_CLEAR)
from ..subsystems import nv_indices
from ..subsystems import act, audit, da, physical_presence
from ..subsystems.contexts import max_active_sessions, saved_session_handles
from ..subsystems.ecdaa import COMMIT_ARRAY_BITS
from ..subsystems.hierarchy import POLICY_HANDLES, hierarchy_policy
from ..subsystems.pcr_banks import (PCR_ATTRIBUTES, PCR_AUTH_GROUP, PCR_NO_INCREMENT, PCR_POLICY_GROUP,
                                pcr_allocation)

# Algorithms ctpm implements, with their TPMA_ALGORITHM (Part 2 §8.2). The object and
# asymmetric algorithms are those TPM2_TestParms accepts.
ALGORITHMS = {
    TPM_ALG.RSA: A.ASYMMETRIC | A.OBJECT,
    TPM_ALG.SHA1: A.HASH,
    TPM_ALG.HMAC: A.HASH | A.SIGNING,
    TPM_ALG.AES: A.SYMMETRIC,
    TPM_ALG.MGF1: A.HASH | A.METHOD,
    TPM_ALG.KEYEDHASH: A.HASH | A.OBJECT | A.SIGNING | A.ENCRYPTING,
    TPM_ALG.XOR: A.HASH | A.SYMMETRIC,
    TPM_ALG.SHA256: A.HASH,
    TPM_ALG.SHA384: A.HASH,
    TPM_ALG.SHA512: A.HASH,
    TPM_ALG.SM3_256: A.HASH,
    TPM_ALG.SM4: A.SYMMETRIC,
    TPM_ALG.RSASSA: A.ASYMMETRIC | A.SIGNING,
    TPM_ALG.RSAES: A.ASYMMETRIC | A.ENCRYPTING,
    TPM_ALG.RSAPSS: A.ASYMMETRIC | A.SIGNING,
    TPM_ALG.OAEP: A.ASYMMETRIC | A.ENCRYPTING,
    TPM_ALG.ECDSA: A.ASYMMETRIC | A.SIGNING,
    TPM_ALG.ECDH: A.ASYMMETRIC | A.METHOD,
    TPM_ALG.ECSCHNORR: A.ASYMMETRIC | A.SIGNING,
    TPM_ALG.ECDAA: A.ASYMMETRIC | A.SIGNING,
    TPM_ALG.SM2: A.ASYMMETRIC | A.SIGNING,      # the signature; no SM2 key exchange (METHOD)
    TPM_ALG.ECMQV: A.ASYMMETRIC | A.METHOD,
    TPM_ALG.KDF1_SP800_56A: A.HASH | A.METHOD,
    TPM_ALG.KDF1_SP800_108: A.HASH | A.METHOD,
    TPM_ALG.KDF2: A.HASH | A.METHOD,          # ECC_Encrypt/ECC_Decrypt only
    TPM_ALG.ECC: A.ASYMMETRIC | A.OBJECT,
    TPM_ALG.SYMCIPHER: A.OBJECT,
    TPM_ALG.CTR: A.SYMMETRIC | A.ENCRYPTING,
    TPM_ALG.OFB: A.SYMMETRIC | A.ENCRYPTING,
    TPM_ALG.CBC: A.SYMMETRIC | A.ENCRYPTING,
    TPM_ALG.CFB: A.SYMMETRIC | A.ENCRYPTING,
    TPM_ALG.ECB: A.SYMMETRIC | A.ENCRYPTING,
}

PERMANENT_HANDLES = (TPM_RH.OWNER, TPM_RH.NULL, TPM_RH.PW, TPM_RH.LOCKOUT,
                     TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM, TPM_RH.PLATFORM_NV)

SPEC_FAMILY = 0x322E3000      # "2.0"
SPEC_LEVEL = 0
SPEC_REVISION = 164           # Library spec 1.64, whose semantics ctpm follows
SPEC_DAY_OF_YEAR = 75
SPEC_YEAR = 2021
PT_GROUP = 0x100
PT_FIXED = 0x100
PT_VAR = 0x200


def _str4(b: bytes, i: int) -> int:
    return int.from_bytes(b[i * 4:i * 4 + 4].ljust(4, b"\0"), "big")


def tpm_properties(tpm):
    """{TPM_PT: value} for the fixed and variable groups (Part 2 §6.13)."""
    cfg = tpm.config
    state = tpm.state
    dav = da.values(state)
    vendor = cfg.vendor_string[:16]
    p = {
        TPM_PT.FAMILY_INDICATOR: SPEC_FAMILY,
        TPM_PT.LEVEL: SPEC_LEVEL,
        TPM_PT.REVISION: SPEC_REVISION,
        TPM_PT.DAY_OF_YEAR: SPEC_DAY_OF_YEAR,
        TPM_PT.YEAR: SPEC_YEAR,
        TPM_PT.MANUFACTURER: _str4(cfg.manufacturer, 0),
        TPM_PT.VENDOR_STRING_1: _str4(vendor, 0),
        TPM_PT.VENDOR_STRING_2: _str4(vendor, 1),
        TPM_PT.VENDOR_STRING_3: _str4(vendor, 2),
        TPM_PT.VENDOR_STRING_4: _str4(vendor, 3),
        TPM_PT.VENDOR_TPM_TYPE: 1,
        TPM_PT.FIRMWARE_VERSION_1: cfg.firmware_version[0],
        TPM_PT.FIRMWARE_VERSION_2: cfg.firmware_version[1],
        TPM_PT.INPUT_BUFFER: S.MAX_DIGEST_BUFFER,
        TPM_PT.HR_TRANSIENT_MIN: cfg.max_objects,
        TPM_PT.HR_PERSISTENT_MIN: cfg.max_persistent,
        TPM_PT.HR_LOADED_MIN: cfg.max_sessions,
        TPM_PT.ACTIVE_SESSIONS_MAX: max_active_sessions(cfg),
        TPM_PT.PCR_COUNT: S.IMPLEMENTATION_PCR,
        TPM_PT.PCR_SELECT_MIN: S.PCR_SELECT_MIN,
        TPM_PT.CONTEXT_GAP_MAX: 0xFFFF,
        TPM_PT.NV_COUNTERS_MAX: 0,
        TPM_PT.NV_INDEX_MAX: cfg.max_nv_index_size,
        TPM_PT.MEMORY: 0,
        TPM_PT.CLOCK_UPDATE: cfg.clock_update_interval_ms,
        TPM_PT.CONTEXT_HASH: TPM_ALG.SHA512,
        TPM_PT.CONTEXT_SYM: TPM_ALG.AES,
        TPM_PT.CONTEXT_SYM_SIZE: 256,
        TPM_PT.ORDERLY_COUNT: 0,
        TPM_PT.MAX_COMMAND_SIZE: cfg.max_command_size,
        TPM_PT.MAX_RESPONSE_SIZE: S.MAX_RESPONSE_SIZE,
        TPM_PT.MAX_DIGEST: S.MAX_DIGEST_SIZE,
        TPM_PT.MAX_OBJECT_CONTEXT: S.MAX_CONTEXT_SIZE,
        TPM_PT.MAX_SESSION_CONTEXT: S.MAX_CONTEXT_SIZE,
        TPM_PT.PS_FAMILY_INDICATOR: 1,      # PC Client
        TPM_PT.PS_LEVEL: 0,
        TPM_PT.PS_REVISION: 0x105,
        TPM_PT.PS_DAY_OF_YEAR: 0,
        TPM_PT.PS_YEAR: 0,
        TPM_PT.SPLIT_MAX: COMMIT_ARRAY_BITS,     # outstanding Commit/EC_Ephemeral counts
        TPM_PT.TOTAL_COMMANDS: len(tpm.dispatcher.table),
        TPM_PT.LIBRARY_COMMANDS: len(tpm.dispatcher.table),
        TPM_PT.VENDOR_COMMANDS: 0,
        TPM_PT.NV_BUFFER_MAX: tpm.config.nv_buffer_max,
        TPM_PT.MODES: 0 & TPMA_MODES.FIPS_140_2,
        TPM_PT.MAX_CAP_BUFFER: S.MAX_CAP_BUFFER,
        # variable group
        TPM_PT.PERMANENT: ((TPMA_PERMANENT.TPMGENERATEDEPS if state.fixed_seed is None else 0)
                           | (TPMA_PERMANENT.OWNERAUTHSET if state.nv.get("owner_auth") else 0)
                           | (TPMA_PERMANENT.ENDORSEMENTAUTHSET
                              if state.nv.get("endorsement_auth") else 0)
                           | (TPMA_PERMANENT.LOCKOUTAUTHSET if state.nv.get("lockout_auth") else 0)
                           | (TPMA_PERMANENT.DISABLECLEAR if state.nv.get("disable_clear") else 0)
                           | (TPMA_PERMANENT.INLOCKOUT
                              if dav["failed_tries"] >= dav["max_tries"] else 0)),
        TPM_PT.STARTUP_CLEAR: ((TPMA_STARTUP_CLEAR.PHENABLE if state.ph_enable else 0)
                               | (TPMA_STARTUP_CLEAR.SHENABLE if state.sh_enable else 0)
                               | (TPMA_STARTUP_CLEAR.EHENABLE if state.eh_enable else 0)
                               | (TPMA_STARTUP_CLEAR.PHENABLENV if state.ph_enable_nv else 0)
                               | (TPMA_STARTUP_CLEAR.ORDERLY if state.orderly_startup else 0)),
        TPM_PT.HR_NV_INDEX: len(nv_indices.handles(state)),
        TPM_PT.HR_LOADED: len(state.sessions),
        TPM_PT.HR_LOADED_AVAIL: cfg.max_sessions - len(state.sessions),
        TPM_PT.HR_ACTIVE: len(state.sessions) + len(saved_session_handles(state)),
        TPM_PT.HR_ACTIVE_AVAIL: (max_active_sessions(cfg) - len(state.sessions)
                                 - len(saved_session_handles(state))),
        TPM_PT.HR_TRANSIENT_AVAIL: cfg.max_objects - len(state.objects),
        TPM_PT.HR_PERSISTENT: len(state.persistent),
        TPM_PT.HR_PERSISTENT_AVAIL: cfg.max_persistent - len(state.persistent),
        TPM_PT.NV_COUNTERS: nv_indices.counters(state),
        TPM_PT.NV_COUNTERS_AVAIL: cfg.max_nv_indices - len(nv_indices.handles(state)),
        TPM_PT.ALGORITHM_SET: state.nv.get("algorithm_set", 0),
        TPM_PT.LOADED_CURVES: len(S.ECC_CURVES),
        TPM_PT.LOCKOUT_COUNTER: dav["failed_tries"],
        TPM_PT.MAX_AUTH_FAIL: dav["max_tries"],
        TPM_PT.LOCKOUT_INTERVAL: dav["recovery_time"],
        TPM_PT.LOCKOUT_RECOVERY: dav["lockout_recovery"],
        TPM_PT.NV_WRITE_RECOVERY: 0,
        TPM_PT.AUDIT_COUNTER_0: audit.audit_counter(state) >> 32,
        TPM_PT.AUDIT_COUNTER_1: audit.audit_counter(state) & 0xFFFFFFFF,
    }
    return p


def _page(items, start_index, count, limit):
    """Up to min(count, limit) items from start_index, and whether more remain."""
    count = min(count, limit)
    chunk = items[start_index:start_index + count]
    return chunk, start_index + len(chunk) < len(items)


def _from(keys, start):
    """Index of the first key >= start in a sorted list."""
    for i, k in enumerate(keys):
        if k >= start:
            return i
    return len(keys)


def _pcr_property_bits(tag):
    """Which PCRs have the TPM_PT_PCR property `tag`, as a select bitmap, or None."""
    def bitmap(pred):
        bits = bytearray(S.PCR_SELECT_MAX)
        for i in range(S.IMPLEMENTATION_PCR):
            if pred(i):
                bits[i // 8] |= 1 << (i % 8)
        return bytes(bits)
    if tag == TPM_PT_PCR.SAVE:
        return bitmap(lambda i: PCR_ATTRIBUTES[i][0])
    if TPM_PT_PCR.EXTEND_L0 <= tag <= TPM_PT_PCR.RESET_L4:
        locality, reset = divmod(tag - 1, 2)
        col = 1 if reset else 2
        return bitmap(lambda i: PCR_ATTRIBUTES[i][col] & (1 << locality))
    if tag == TPM_PT_PCR.NO_INCREMENT:
        return bitmap(lambda i: i in PCR_NO_INCREMENT)
    if tag == TPM_PT_PCR.DRTM_RESET:
        return bitmap(lambda i: PCR_ATTRIBUTES[i][1] & 0x10)
    if tag == TPM_PT_PCR.POLICY:
        return bitmap(lambda i: i in PCR_POLICY_GROUP)
    if tag == TPM_PT_PCR.AUTH:
        return bitmap(lambda i: i in PCR_AUTH_GROUP)
    return None


def get_capability(tpm, ctx, capability, prop, count):
    """Part 3 §30.2."""
    state = tpm.state
    more = False
    if capability == TPM_CAP.ALGS:
        algs = sorted(ALGORITHMS)
        chunk, more = _page(algs, _from(algs, prop), count, S.MAX_CAP_ALGS)
        data = [Container(alg=a, algProperties=int(ALGORITHMS[a])) for a in chunk]
    elif capability == TPM_CAP.HANDLES:
        htype = prop >> 24
        if htype == TPM_HT.PCR:
            handles = list(range(S.IMPLEMENTATION_PCR))
        elif htype == TPM_HT.PERMANENT:
            handles = list(PERMANENT_HANDLES)
        elif htype == TPM_HT.LOADED_SESSION:
            # HMAC and policy sessions alike, in slot order (as the reference TPM)
            first = prop & 0xFFFFFF
            handles = sorted((h for h in state.sessions if h & 0xFFFFFF >= first),
                             key=lambda h: h & 0xFFFFFF)
            prop = 0
        elif htype == TPM_HT.TRANSIENT:
            handles = sorted(state.objects)
        elif htype == TPM_HT.PERSISTENT:
            handles = sorted(state.persistent)
        elif htype == TPM_HT.SAVED_SESSION:
            # As the reference's SessionCapGetSaved: by slot, each as an HMAC-session handle.
            handles = sorted(0x02000000 | (h & 0xFFFFFF) for h in saved_session_handles(state))
            prop = 0x02000000 | (prop & 0xFFFFFF)
        elif htype == TPM_HT.NV_INDEX:
            handles = nv_indices.handles(state)
        else:
            raise TpmError(TPM_RC.HANDLE, param=2)
        data, more = _page(handles, _from(handles, prop), count, S.MAX_CAP_HANDLES)
    elif capability == TPM_CAP.COMMANDS:
        codes = sorted(tpm.dispatcher.table)
        chunk, more = _page(codes, _from(codes, prop), count, S.MAX_CAP_CC)
        data = [tpm.dispatcher.table[c][0].attributes for c in chunk]
    elif capability == TPM_CAP.PP_COMMANDS:
        codes = physical_presence.required_list(state)
        data, more = _page(codes, _from(codes, prop), count, S.MAX_CAP_CC)
    elif capability == TPM_CAP.AUDIT_COMMANDS:
        codes = sorted(audit.audit_commands(state))
        data, more = _page(codes, _from(codes, prop), count, S.MAX_CAP_CC)
    elif capability == TPM_CAP.PCRS:
        if prop != 0:
            raise TpmError(TPM_RC.VALUE, param=2)
        allocated = pcr_allocation(state.nv["pcr_allocated"])     # (partial banks too)
        data = [Container(hash=alg, pcrSelect=allocated.get(alg, 0).to_bytes(
            S.PCR_SELECT_MAX, "little")) for alg in S.PCR_HASHES]
    elif capability == TPM_CAP.TPM_PROPERTIES:
        props = tpm_properties(tpm)
        start = max(prop, PT_FIXED)
        group_end = (start // PT_GROUP) * PT_GROUP + PT_GROUP
        keys = sorted(k for k in props if start <= k < group_end)
        chunk, more = _page(keys, 0, count, S.MAX_TPM_PROPERTIES)
        data = [Container(property=k, value=int(props[k])) for k in chunk]
    elif capability == TPM_CAP.PCR_PROPERTIES:
        tags = [t for t in sorted(TPM_PT_PCR) if _pcr_property_bits(t) is not None]
        chunk, more = _page(tags, _from(tags, prop), count, S.MAX_PCR_PROPERTIES)
        data = [Container(tag=t, pcrSelect=_pcr_property_bits(t)) for t in chunk]
    elif capability == TPM_CAP.ECC_CURVES:
        curves = sorted(S.ECC_CURVES)
        data, more = _page(curves, _from(curves, prop), count, S.MAX_ECC_CURVES)
    elif capability == TPM_CAP.AUTH_POLICIES:
        # PermanentHandleGetPolicy: every permanent handle with an authPolicy, set or not
        if prop >> 24 != TPM_HT.PERMANENT:
            raise TpmError(TPM_RC.VALUE, param=2)
        handles = [h for h in sorted(POLICY_HANDLES + tuple(act.handles())) if h >= prop]
        chunk, more = _page(handles, 0, count, S.MAX_CAP_DATA // 70)   # MAX_TAGGED_POLICIES
        data = []
        for h in chunk:
            alg, digest = hierarchy_policy(state, h)
            data.append(Container(handle=h, policyHash=Container(hashAlg=alg, digest=digest)))
    else:                                           # TPM_CAP_ACT
        if not TPM_RH.ACT_0 <= prop <= TPM_RH.ACT_F:
            data = []                               # (ActGetCapabilityData: nothing)
        else:
            found, more = act.capability(state, prop, min(count, S.MAX_CAP_DATA // 12))
            data = [Container(handle=h, timeout=t, attributes=a) for h, t, a in found]
    return (int(more), Container(capability=capability, data=data))


def test_parms(tpm, ctx, parameters):
    """Part 3 §30.3: every check happens while unmarshaling TPMT_PUBLIC_PARMS."""


# -- one property (TPM2_PolicyCapability) -----------------------------------------------------

_KEYS = {
    TPM_CAP.ALGS: lambda e: e.alg,
    TPM_CAP.HANDLES: lambda e: e,
    TPM_CAP.COMMANDS: lambda e: e & 0xFFFF,
    TPM_CAP.PP_COMMANDS: lambda e: e,
    TPM_CAP.AUDIT_COMMANDS: lambda e: e,
    TPM_CAP.TPM_PROPERTIES: lambda e: e.property,
    TPM_CAP.PCR_PROPERTIES: lambda e: e.tag,
    TPM_CAP.ECC_CURVES: lambda e: e,
    TPM_CAP.AUTH_POLICIES: lambda e: e.handle,
    TPM_CAP.ACT: lambda e: e.handle,
}
# handle types TPM_CAP_HANDLES can look up one of (the reference's ...CapGetOne...)
_ONE_HANDLE_TYPES = (TPM_HT.TRANSIENT, TPM_HT.PERSISTENT, TPM_HT.NV_INDEX, TPM_HT.HMAC_SESSION,
                     TPM_HT.POLICY_SESSION, TPM_HT.PCR, TPM_HT.PERMANENT)


def one_property(tpm, capability, prop):
    """The marshaled capability data of exactly `prop` (TPMS_ALG_PROPERTY, a handle, TPMA_CC,
    TPMS_TAGGED_PROPERTY, ...), None if the TPM has no such property. For PolicyCapability:
    TPM_RC_VALUE (parameter 4) for a capability it cannot take (TPM_CAP_PCRS and unknown
    ones), TPM_RC_HANDLE or TPM_RC_VALUE (parameter 5) for a property outside the range."""
    key = _KEYS.get(capability)
    if key is None:
        raise TpmError(TPM_RC.VALUE, param=4)
    if capability == TPM_CAP.HANDLES and prop >> 24 not in _ONE_HANDLE_TYPES:
        raise TpmError(TPM_RC.HANDLE, param=5)
    if capability == TPM_CAP.AUTH_POLICIES and prop >> 24 != TPM_HT.PERMANENT:
        raise TpmError(TPM_RC.VALUE, param=5)
    if capability == TPM_CAP.ACT and not TPM_RH.ACT_0 <= prop <= TPM_RH.ACT_F:
        raise TpmError(TPM_RC.VALUE, param=5)
    if capability == TPM_CAP.COMMANDS and prop > 0xFFFF:
        return None
    _more, found = get_capability(tpm, None, capability, prop, 1)
    items = [e for e in found.data if key(e) == prop]
    if not items:
        return None
    return S.TPMU_CAPABILITIES.cases[capability].build(items)[4:]
