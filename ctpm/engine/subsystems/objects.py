"""Loaded objects (Part 1 §27): what a transient handle refers to, and its Name.

An `Object` keeps the parsed public and sensitive areas, the public area's canonical bytes
(the Name is a hash over them) and the hierarchy it belongs to. The table of loaded objects
lives in `TpmState.objects`.
"""
from dataclasses import dataclass, field

from ...crypto import hashes
from ...errors import TpmError
from ...wire.constants import TPM_HT, TPM_RC, TPMA_OBJECT as OA
from ...wire.objects import TPMT_PUBLIC


@dataclass
class Object:
    public: object              # TPMT_PUBLIC (Container)
    public_bytes: bytes         # its canonical marshaling
    sensitive: object           # TPMT_SENSITIVE (Container)
    hierarchy: int              # TPM_RH_OWNER / ENDORSEMENT / PLATFORM / NULL
    name: bytes
    qualified_name: bytes
    primary: bool = False
    key: object = field(default=None, repr=False)   # cryptography key, made on first use
    evict: int | None = None    # the persistent handle, for a persistent object

    @property
    def attributes(self) -> int:
        return self.public.objectAttributes

    @property
    def auth_value(self) -> bytes:
        # a public-only object (TPM2_LoadExternal without inPrivate) has no authValue
        return self.sensitive.authValue if self.sensitive is not None else b""


def public_bytes(public) -> bytes:
    return TPMT_PUBLIC.build(public)


def compute_name(name_alg, public_area: bytes) -> bytes:
    """Name of an object: nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1 §16)."""
    return name_alg.to_bytes(2, "big") + hashes.digest(name_alg, public_area)


def qualified_name(parent_qn: bytes, name: bytes, name_alg) -> bytes:
    """QN(child) = nameAlg || H(QN(parent) || Name(child)) (Part 1 §16.5)."""
    return name_alg.to_bytes(2, "big") + hashes.digest(name_alg, parent_qn + name)


def hierarchy_qualified_name(hierarchy: int) -> bytes:
    """A hierarchy's qualified name is its handle."""
    return hierarchy.to_bytes(4, "big")


def free_object_handle(state) -> int:
    """The lowest free transient slot, or TPM_RC_OBJECT_MEMORY."""
    used = {h & 0xFFFFFF for h in state.objects}
    if len(used) >= state.config.max_objects:
        raise TpmError(TPM_RC.OBJECT_MEMORY)
    slot = next(i for i in range(len(used) + 1) if i not in used)
    return (TPM_HT.TRANSIENT << 24) | slot


def is_da_exempt(obj) -> bool:
    return bool(obj.attributes & OA.NODA)
