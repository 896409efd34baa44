"""Persistent objects (Part 3 §28.5 TPM2_EvictControl, in engine/commands/context.py): how they are
kept in the NV image.

A persistent object is a copy of a loaded object stored in NV under a handle in the owner
(0x81000000-0x817FFFFF) or platform (0x81800000-0x81FFFFFF) range. It is used by its
persistent handle directly, survives restarts with the state directory, and is removed by
EvictControl on that handle.
"""
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


