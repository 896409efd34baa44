"""The passthrough guard: what a guest may ask of a hardware TPM it shares with the host and
other guests (docs/modes.md, "Passthrough").

Only the command header, the handle area and, for NV_DefineSpace and EvictControl, the one
parameter naming the new index or persistent handle are read: sessions stay opaque (their
HMACs cover bytes the guard never changes), so the guest's HMAC and policy sessions work as
with the TPM itself. A refusal is a bare response header with a TPM_RC a TSS knows:

* a refused command (`refuse`): TPM_RC_COMMAND_CODE (0x143), as for a command the TPM lacks;
* platform authorization (TPM_RH_PLATFORM, TPM_RH_PLATFORM_NV in the handle area):
  TPM_RC_HIERARCHY + the handle's number (0x185 for handle 1, 0x285 for handle 2);
* an NV index or persistent handle outside this guest's ranges (or, in a `shared` range,
  used by a command that changes it): TPM_RC_HANDLE + the handle's number (0x18B, 0x28B, ...),
  what the TPM says of a handle that does not exist, so another guest's indices are not
  even seen to exist;
* a PCR in a command that changes PCRs (PCR_Extend, PCR_Event, PCR_Reset, EventSequenceComplete,
  PCR_SetAuthValue/Policy) unless `pcr_writes`: TPM_RC_LOCALITY (0x907, a warning, so no
  handle number), what a TPM says of a PCR this locality may not change: the host's PCRs
  are not the guest's;
* NV_DefineSpace of an index outside the guest's NV range: TPM_RC_VALUE + parameter 2
  (0x2C4: publicInfo); EvictControl to a persistent handle outside its range: TPM_RC_VALUE +
  parameter 1 (0x1C4: persistentHandle);
* a command whose handle count the guard does not know (not in the upstream's command list):
  TPM_RC_COMMAND_CODE; a malformed header: TPM_RC_COMMAND_SIZE (0x142) or
  TPM_RC_INSUFFICIENT (0x9A) when the handle area is cut short.
GetCapability(COMMANDS, PP_COMMANDS) loses the refused commands and GetCapability(HANDLES)
the NV indices and persistent handles the guest may not use; a GetCapability for these
with sessions (whose response HMAC would no longer match) is refused with TPM_RC_VALUE +
parameter 1 (0x1C4).
"""
import struct
from dataclasses import dataclass

CC = {
    "NV_UndefineSpaceSpecial": 0x11F, "EvictControl": 0x120, "HierarchyControl": 0x121,
    "NV_UndefineSpace": 0x122, "ChangeEPS": 0x124, "ChangePPS": 0x125, "Clear": 0x126,
    "ClearControl": 0x127, "ClockSet": 0x128, "HierarchyChangeAuth": 0x129,
    "NV_DefineSpace": 0x12A, "PCR_Allocate": 0x12B, "PCR_SetAuthPolicy": 0x12C,
    "PP_Commands": 0x12D, "SetPrimaryPolicy": 0x12E, "FieldUpgradeStart": 0x12F,
    "ClockRateAdjust": 0x130, "NV_GlobalWriteLock": 0x132, "NV_Increment": 0x134,
    "NV_SetBits": 0x135, "NV_Extend": 0x136, "NV_Write": 0x137, "NV_WriteLock": 0x138,
    "DictionaryAttackLockReset": 0x139, "DictionaryAttackParameters": 0x13A,
    "NV_ChangeAuth": 0x13B, "PCR_Event": 0x13C, "PCR_Reset": 0x13D, "SetAlgorithmSet": 0x13F,
    "SetCommandCodeAuditStatus": 0x140, "FieldUpgradeData": 0x141, "Shutdown": 0x145,
    "NV_Read": 0x14E, "NV_ReadLock": 0x14F, "NV_ReadPublic": 0x169, "FirmwareRead": 0x179,
    "GetCapability": 0x17A, "PCR_Extend": 0x182, "PCR_SetAuthValue": 0x183,
    "NV_Certify": 0x184, "EventSequenceComplete": 0x185,
}

# What an operator signs off on for a TPM shared with the host and other guests: nothing that
# clears, disables or re-keys a hierarchy, changes a shared authorization value or DA policy,
# reallocates PCR banks, changes firmware or the clock, or shuts the TPM down.
DEFAULT_REFUSE = (
    "Clear", "ClearControl", "ChangeEPS", "ChangePPS", "HierarchyControl", "PP_Commands",
    "SetAlgorithmSet", "FieldUpgradeStart", "FieldUpgradeData", "FirmwareRead",
    "NV_UndefineSpaceSpecial", "HierarchyChangeAuth", "SetPrimaryPolicy",
    "DictionaryAttackParameters", "DictionaryAttackLockReset", "NV_GlobalWriteLock",
    "PCR_Allocate", "ClockSet", "ClockRateAdjust", "SetCommandCodeAuditStatus", "Shutdown",
)
# Readable by every guest, changed by none: the TCG EK certificate indices and EK handles.
DEFAULT_SHARED = ((0x01C00000, 0x01C07FFF), (0x81010000, 0x810100FF))

# Commands that change the NV index or persistent object they name.
MODIFYING = frozenset(CC[n] for n in (
    "NV_UndefineSpace", "NV_Increment", "NV_SetBits", "NV_Extend", "NV_Write", "NV_WriteLock",
    "NV_ChangeAuth", "NV_ReadLock", "EvictControl", "NV_UndefineSpaceSpecial"))
PCR_WRITERS = frozenset(CC[n] for n in (
    "PCR_Extend", "PCR_Event", "PCR_Reset", "EventSequenceComplete", "PCR_SetAuthValue",
    "PCR_SetAuthPolicy"))

RH_PLATFORM, RH_PLATFORM_NV = 0x4000000C, 0x4000000D
ST_NO_SESSIONS, ST_SESSIONS = 0x8001, 0x8002
CAP_HANDLES, CAP_COMMANDS, CAP_PP_COMMANDS, CAP_TPM_PROPERTIES = 1, 2, 7, 6
PT_TOTAL_COMMANDS, PT_LIBRARY_COMMANDS = 0x129, 0x12A
_HEADER = struct.Struct(">HII")
# commands whose parameters the guard reads too (after their handles)
_PARAMS_CHECKED = frozenset(CC[n] for n in ("GetCapability", "NV_DefineSpace", "EvictControl"))

RC_COMMAND_CODE, RC_COMMAND_SIZE, RC_INSUFFICIENT = 0x143, 0x142, 0x09A
RC_HIERARCHY, RC_HANDLE, RC_VALUE = 0x085, 0x08B, 0x084
RC_LOCALITY = 0x907             # RC_WARN + 7: format 0, carries no handle number
RC_H, RC_P = 0x000, 0x040


def handle_rc(rc: int, n: int) -> int:
    return rc | RC_H | (n << 8)


def param_rc(rc: int, n: int) -> int:
    return rc | RC_P | (n << 8)


def response(rc: int) -> bytes:
    return struct.pack(">HII", ST_NO_SESSIONS, 10, rc)


def parse_range(text: str, where: str) -> tuple[int, int]:
    """'0x01500000-0x015000FF' -> (first, last); ValueError with a one-line reason."""
    first, sep, last = str(text).partition("-")
    try:
        lo, hi = int(first, 0), int(last, 0)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not FIRST-LAST (hex handles)") from None
    if not sep or lo > hi:
        raise ValueError(f"{where}: {text!r} is not FIRST-LAST with FIRST <= LAST")
    return lo, hi


@dataclass(frozen=True)
class Policy:
    """What the guard allows; `nv_range`/`persistent_range` are this guest's own (None: it
    may define or persist nothing), `shared` ranges are usable but never changed."""

    refuse: frozenset = frozenset(CC[n] for n in DEFAULT_REFUSE)
    nv_range: tuple | None = None
    persistent_range: tuple | None = None
    shared: tuple = DEFAULT_SHARED
    pcr_writes: bool = False

    def own(self, handle: int) -> bool:
        r = self.nv_range if handle >> 24 == 0x01 else self.persistent_range
        return r is not None and r[0] <= handle <= r[1]

    def is_shared(self, handle: int) -> bool:
        return any(lo <= handle <= hi for lo, hi in self.shared)

    def visible(self, handle: int) -> bool:
        return handle >> 24 not in (0x01, 0x81) or self.own(handle) or self.is_shared(handle)


class Guard:
    """Checks commands against a `Policy`. `handle_counts` maps a command code to the number
    of handles in its handle area (from the upstream's TPMA_CC list)."""

    def __init__(self, policy: Policy, handle_counts: dict):
        self.policy = policy
        self.handle_counts = dict(handle_counts)
        # the upstream's commands the guest does not see (the count properties say so too)
        self.hidden = sum(1 for cc in self.handle_counts if cc in policy.refuse)

    def check(self, command: bytes) -> bytes | None:
        """None if `command` may go to the upstream, else the refusal response."""
        if len(command) < 10:
            return response(RC_COMMAND_SIZE)
        tag, size, cc = _HEADER.unpack_from(command)
        if size != len(command):
            return response(RC_COMMAND_SIZE)
        p = self.policy
        if cc in p.refuse:
            return response(RC_COMMAND_CODE)
        n = self.handle_counts.get(cc)
        if n is None:
            return response(RC_COMMAND_CODE)
        end = 10 + 4 * n
        if len(command) < end:
            return response(RC_INSUFFICIENT)
        if n == 0 and cc not in _PARAMS_CHECKED:        # most commands: nothing more to see
            return None
        handles = struct.unpack(f">{n}I", command[10:end])
        for i, h in enumerate(handles, 1):
            kind = h >> 24
            if h in (RH_PLATFORM, RH_PLATFORM_NV):
                return response(handle_rc(RC_HIERARCHY, i))
            if kind in (0x01, 0x81):
                if not (p.own(h) or (p.is_shared(h) and cc not in MODIFYING)):
                    return response(handle_rc(RC_HANDLE, i))
            elif kind == 0x00 and cc in PCR_WRITERS and not p.pcr_writes:
                return response(RC_LOCALITY)
        if cc in (CC["NV_DefineSpace"], CC["EvictControl"]):
            return self._check_target(command, tag, cc, end, handles)
        if cc == CC["GetCapability"] and tag != ST_NO_SESSIONS:
            params = self._params(command, tag, end)
            if params is None or len(params) < 4 or struct.unpack(">I", params[:4])[0] in (
                    CAP_HANDLES, CAP_COMMANDS, CAP_PP_COMMANDS):
                return response(param_rc(RC_VALUE, 1))
        return None

    @staticmethod
    def _params(command, tag, end):
        if tag != ST_SESSIONS:
            return command[end:]
        if len(command) < end + 4:
            return None
        auth_size = struct.unpack(">I", command[end:end + 4])[0]
        return command[end + 4 + auth_size:]

    def _check_target(self, command, tag, cc, end, handles):
        params = self._params(command, tag, end)
        p = self.policy
        if cc == CC["EvictControl"]:
            if params is None or len(params) < 4:
                return response(RC_INSUFFICIENT)
            target = struct.unpack(">I", params[:4])[0]
            if target >> 24 != 0x81 or not p.own(target):
                return response(param_rc(RC_VALUE, 1))
            return None
        # NV_DefineSpace: TPM2B_AUTH auth, then TPM2B_NV_PUBLIC whose first field is nvIndex
        if params is None or len(params) < 2:
            return response(RC_INSUFFICIENT)
        pos = 2 + struct.unpack(">H", params[:2])[0]
        if len(params) < pos + 6:
            return response(RC_INSUFFICIENT)
        index = struct.unpack(">I", params[pos + 2:pos + 6])[0]
        if index >> 24 != 0x01 or not p.own(index):
            return response(param_rc(RC_VALUE, 2))
        return None

    def forwarded(self, command: bytes) -> bytes:
        """The bytes sent upstream for `command`: itself, but for a GetCapability of the
        command lists, which asks for as many more as the guard may hide, so that the
        filtered answer still holds as many as the guest asked for (the Linux driver asks
        for TPM_PT_TOTAL_COMMANDS of them and needs exactly that many back)."""
        if (len(command) == 22 and command[6:10] == b"\0\0\x01\x7a"
                and command[:2] == b"\x80\x01"
                and command[10:14] in (b"\0\0\0\x02", b"\0\0\0\x07")):
            count = struct.unpack(">I", command[18:22])[0]
            return command[:18] + struct.pack(
                ">I", min(count + len(self.policy.refuse), 0xFFFFFFFF))
        return command

    def filter_capability(self, command: bytes, rsp: bytes) -> bytes:
        """A GetCapability response (no sessions) with what the guest may not use removed:
        handles outside its ranges, refused commands (at most the count it asked for: see
        `forwarded`), and those commands from TPM_PT_TOTAL/LIBRARY_COMMANDS."""
        if rsp[6:10] != b"\0\0\0\0" or len(rsp) < 19 or command[:2] != b"\x80\x01":
            return rsp
        more, cap, count = struct.unpack(">BII", rsp[10:19])
        if cap == CAP_TPM_PROPERTIES and self.hidden and len(rsp) >= 19 + 8 * count:
            pairs = list(struct.unpack(f">{2 * count}I", rsp[19:19 + 8 * count]))
            for i in range(0, 2 * count, 2):
                if pairs[i] in (PT_TOTAL_COMMANDS, PT_LIBRARY_COMMANDS):
                    pairs[i + 1] = max(pairs[i + 1] - self.hidden, 0)
            return rsp[:19] + struct.pack(f">{2 * count}I", *pairs) + rsp[19 + 8 * count:]
        if cap not in (CAP_HANDLES, CAP_COMMANDS, CAP_PP_COMMANDS) or len(rsp) < 19 + 4 * count:
            return rsp
        items = struct.unpack(f">{count}I", rsp[19:19 + 4 * count])
        refuse = self.policy.refuse
        if cap == CAP_HANDLES:
            kept = [h for h in items if self.policy.visible(h)]
        else:
            if cap == CAP_COMMANDS:     # TPMA_CC: commandIndex in bits 0-15, V in bit 29
                kept = [a for a in items if a & 0x2000FFFF not in refuse]
            else:                       # TPML_CC: the codes themselves
                kept = [c for c in items if c not in refuse]
            asked = struct.unpack(">I", command[18:22])[0] if len(command) == 22 else count
            if len(kept) > asked:
                kept, more = kept[:asked], 1
        body = struct.pack(f">BII{len(kept)}I", more, cap, len(kept), *kept)
        return struct.pack(">HII", ST_NO_SESSIONS, 10 + len(body), 0) + body
