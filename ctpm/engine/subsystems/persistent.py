"""Persistent objects: Part 3 §28.5 TPM2_EvictControl, and how they are kept in the NV image.

A persistent object is a copy of a loaded object stored in NV under a handle in the owner
(0x81000000-0x817FFFFF) or platform (0x81800000-0x81FFFFFF) range. It is used by its
persistent handle directly, survives restarts with the state directory, and is removed by
EvictControl on that handle.
"""
from ...errors import TpmError
from ...wire.constants import TPM_RC, TPM_RH, TPMA_OBJECT as OA
from ...wire.objects import TPMT_PUBLIC, TPMT_SENSITIVE
from .keyuse import binding_check
from .objects import Object, compute_name

OWNER_FIRST, OWNER_LAST = 0x81000000, 0x817FFFFF
PLATFORM_FIRST, PLATFORM_LAST = 0x81800000, 0x81FFFFFF


def to_nv(obj) -> dict:
    return {"public": obj.public_bytes.hex(),
            "sensitive": TPMT_SENSITIVE.build(obj.sensitive).hex(),
            "hierarchy": obj.hierarchy, "qn": obj.qualified_name.hex(),
            "primary": obj.primary}


def from_nv(entry: dict, handle: int) -> Object:
    public_bytes = bytes.fromhex(entry["public"])
    public = TPMT_PUBLIC.parse(public_bytes)
    sensitive = TPMT_SENSITIVE.parse(bytes.fromhex(entry["sensitive"]))
    obj = Object(public=public, public_bytes=public_bytes, sensitive=sensitive,
                 hierarchy=entry["hierarchy"], name=compute_name(public.nameAlg, public_bytes),
                 qualified_name=bytes.fromhex(entry["qn"]), primary=entry["primary"])
    obj.key = binding_check(public, sensitive)     # the key object, rebuilt as Load does
    obj.evict = handle
    return obj


def evict_control(tpm, ctx, auth, object_handle, persistent_handle):
    """Part 3 §28.5: make a loaded object persistent, or remove a persistent one."""
    state = tpm.state
    obj = state.object(object_handle)
    evict = getattr(obj, "evict", None)
    if obj.hierarchy == TPM_RH.NULL or obj.attributes & OA.STCLEAR or obj.sensitive is None:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=2)
    if evict is not None and evict != persistent_handle:
        raise TpmError(TPM_RC.HANDLE, handle=2)
    if auth == TPM_RH.PLATFORM:
        if evict is None:
            if obj.hierarchy != TPM_RH.PLATFORM:
                raise TpmError(TPM_RC.HIERARCHY, handle=2)
            if not PLATFORM_FIRST <= persistent_handle <= PLATFORM_LAST:
                raise TpmError(TPM_RC.RANGE, param=1)
    else:
        if obj.hierarchy == TPM_RH.PLATFORM:
            raise TpmError(TPM_RC.HIERARCHY, handle=2)
        if evict is None and not OWNER_FIRST <= persistent_handle <= OWNER_LAST:
            raise TpmError(TPM_RC.RANGE, param=1)
    if evict is None:
        if persistent_handle in state.persistent:
            raise TpmError(TPM_RC.NV_DEFINED)
        if len(state.persistent) >= tpm.config.max_persistent:
            raise TpmError(TPM_RC.NV_SPACE)
        copy = from_nv(to_nv(obj), persistent_handle)
        state.persistent[persistent_handle] = copy
    else:
        del state.persistent[persistent_handle]
    state.nv["persistent"] = {f"{h:08x}": to_nv(o) for h, o in sorted(state.persistent.items())}
    state.dirty = True
