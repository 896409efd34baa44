"""Part 2 §13: NV storage structures (TPMA_NV, TPMS_NV_PUBLIC, TPM2B_NV_PUBLIC) and the
NV handle interfaces."""
from enum import IntFlag

from .base import Int, Record, Sized
from .constants import TPM_HT, TPM_RC, TPM_RH
from .structures import TPM2B_DIGEST, TPMI_ALG_HASH

MAX_NV_INDEX_SIZE = 2048


class TPMA_NV(IntFlag):
    PPWRITE = 0x00000001
    OWNERWRITE = 0x00000002
    AUTHWRITE = 0x00000004
    POLICYWRITE = 0x00000008
    TPM_NT_MASK = 0x000000F0
    POLICY_DELETE = 0x00000400
    WRITELOCKED = 0x00000800
    WRITEALL = 0x00001000
    WRITEDEFINE = 0x00002000
    WRITE_STCLEAR = 0x00004000
    GLOBALLOCK = 0x00008000
    PPREAD = 0x00010000
    OWNERREAD = 0x00020000
    AUTHREAD = 0x00040000
    POLICYREAD = 0x00080000
    NO_DA = 0x02000000
    ORDERLY = 0x04000000
    CLEAR_STCLEAR = 0x08000000
    READLOCKED = 0x10000000
    WRITTEN = 0x20000000
    PLATFORMCREATE = 0x40000000
    READ_STCLEAR = 0x80000000


class TPM_NT:
    ORDINARY = 0
    COUNTER = 1
    BITS = 2
    EXTEND = 4
    PIN_FAIL = 8
    PIN_PASS = 9


TPMA_NV_RESERVED = 0x01F00300


class PlainFlags:
    """An IntFlag's members as plain ints: `int & IntFlag` goes through enum's __rand__ and
    costs microseconds; an NV command tests a dozen attribute bits."""

    def __init__(self, flags):
        for member in flags:
            setattr(self, member.name, int(member))


def nt_of(attributes: int) -> int:
    return (attributes >> 4) & 0xF


def _is_nv(v):
    return v >> 24 == TPM_HT.NV_INDEX


TPMA_NV_ = Int(4, lambda v: not v & TPMA_NV_RESERVED, TPM_RC.RESERVED_BITS)
TPMI_RH_NV_INDEX = Int(4, _is_nv, TPM_RC.VALUE)
TPMI_RH_NV_AUTH = Int(4, lambda v: v in (TPM_RH.OWNER, TPM_RH.PLATFORM) or _is_nv(v),
                      TPM_RC.VALUE)
# MAX_NV_INDEX_SIZE is per instance (EngineConfig.max_nv_index_size, default 2048): the
# ordinary-index size bound is checked by NV_DefineSpace, with the same TPM_RC_SIZE (param 2)
NV_DATA_SIZE = Int(2)

TPMS_NV_PUBLIC = Record("nvIndex" / TPMI_RH_NV_INDEX, "nameAlg" / TPMI_ALG_HASH,
                        "attributes" / TPMA_NV_, "authPolicy" / TPM2B_DIGEST,
                        "dataSize" / NV_DATA_SIZE)
TPM2B_NV_PUBLIC = Sized(TPMS_NV_PUBLIC)        # size 0: TPM_RC_SIZE
