"""Part 3 §28: context management - TPM2_ContextSave, TPM2_ContextLoad, TPM2_FlushContext and
TPM2_EvictControl.

The context blob (its protection, the payload encoding, the saved-session bookkeeping) is
engine/subsystems/contexts.py; persistent objects in the NV image are
engine/subsystems/persistent.py.
"""
import logging
import struct

from construct import Container

from ...errors import TpmError
from ...wire.constants import TPM_HT, TPM_RC, TPM_RH, TPMA_OBJECT as OA
from ..subsystems import contexts
from ..subsystems.contexts import (KIND_OBJECT, KIND_SEQUENCE, KIND_SESSION,
                                   OBJECT_CONTEXT, OTHER_SESSION_TYPE, SEQUENCE_CONTEXT,
                                   STCLEAR_CONTEXT, bookkeeping, decode_fields, decode_object,
                                   decode_sequence, decode_session, encode_object,
                                   encode_sequence, encode_session, open_blob, saved_key, seal)
from ..subsystems.objects import free_object_handle
from ..subsystems.persistent import (OWNER_FIRST, OWNER_LAST, PLATFORM_FIRST, PLATFORM_LAST,
                                     from_nv, to_nv)
from ..subsystems.sequences import Sequence
from ..subsystems.sessions import is_session_handle

log = logging.getLogger("ctpm.engine")

def _loaded_session(state, handle: int):
    """The loaded session a handle names (the reference's EntityGetLoadStatus): its slot
    holding a session of the other kind is TPM_RC_HANDLE, an empty slot REFERENCE_H0."""
    session = state.sessions.get(handle)
    if session is None:
        if handle ^ OTHER_SESSION_TYPE in state.sessions:
            raise TpmError(TPM_RC.HANDLE, handle=1)
        raise TpmError(TPM_RC.REFERENCE_H0)
    return session


def context_save(tpm, ctx, save_handle):
    """Part 3 §28.2: an object stays loaded; a session leaves the loaded set (it is saved)."""
    state = tpm.state
    book = bookkeeping(state)
    if is_session_handle(save_handle):
        session = _loaded_session(state, save_handle)
        saved = book["saved_sessions"]
        sequence = book["session_sequence"]
        if saved and sequence - min(saved.values()) >= contexts.MAX_CONTEXT_GAP:
            raise TpmError(TPM_RC.CONTEXT_GAP)
        blob = seal(state, TPM_RH.NULL, sequence, save_handle, encode_session(session))
        book["session_sequence"] = sequence + 1
        saved[saved_key(save_handle)] = sequence
        del state.sessions[save_handle]
        saved_handle, hierarchy = save_handle, TPM_RH.NULL
    else:
        obj = state.objects[save_handle]
        sequence = book["object_sequence"] + 1
        hierarchy = obj.hierarchy
        if isinstance(obj, Sequence):
            saved_handle, payload = SEQUENCE_CONTEXT, encode_sequence(state, obj)
        else:
            saved_handle = (STCLEAR_CONTEXT if obj.attributes & OA.STCLEAR
                            else OBJECT_CONTEXT)
            payload = encode_object(obj)
        blob = seal(state, hierarchy, sequence, saved_handle, payload)
        book["object_sequence"] = sequence
    state.clear_orderly()
    return (Container(sequence=sequence, savedHandle=saved_handle, hierarchy=hierarchy,
                      contextBlob=blob),)


def context_load(tpm, ctx, context):
    """Part 3 §28.3: an object at a new transient handle, a session at its own handle."""
    state = tpm.state
    payload = open_blob(state, context)
    try:
        kind, values = decode_fields(payload)
    except (ValueError, IndexError, struct.error):
        log.error("a context with valid integrity does not decode")
        raise TpmError(TPM_RC.FAILURE) from None
    handle = context.savedHandle
    if handle >> 24 == TPM_HT.TRANSIENT:
        if kind not in (KIND_OBJECT, KIND_SEQUENCE):
            raise TpmError(TPM_RC.FAILURE)
        new_handle = free_object_handle(state)
        state.objects[new_handle] = (decode_object(values) if kind == KIND_OBJECT
                                     else decode_sequence(state, values))
        return (new_handle,)
    if kind != KIND_SESSION:
        raise TpmError(TPM_RC.FAILURE)
    book = bookkeeping(state)
    saved = book["saved_sessions"]
    if saved.get(saved_key(handle)) != context.sequence:
        raise TpmError(TPM_RC.HANDLE, param=1)
    free = tpm.config.max_sessions - len(state.sessions)
    if free <= 0:
        raise TpmError(TPM_RC.SESSION_MEMORY)
    # With one loaded slot left and the gap at its maximum, only the oldest saved session
    # may come back (so that it can be saved again and the gap closed).
    oldest = min(saved.values())
    if (free == 1 and book["session_sequence"] - oldest >= contexts.MAX_CONTEXT_GAP
            and context.sequence != oldest):
        raise TpmError(TPM_RC.CONTEXT_GAP)
    session = decode_session(values)
    del saved[saved_key(handle)]
    state.sessions[handle] = session
    state.clear_orderly()
    return (handle,)


def flush_context(tpm, ctx, flush_handle):
    """Part 3 §28.4: a loaded or saved session, or a transient object, is gone.

    A session is found by its slot, whichever of the two session handle types names it (the
    reference's SessionIsLoaded / SessionIsSaved look at the index only; swtpm agrees)."""
    state = tpm.state
    if is_session_handle(flush_handle):
        for handle in (flush_handle, flush_handle ^ OTHER_SESSION_TYPE):
            if state.sessions.pop(handle, None) is not None or \
                    bookkeeping(state)["saved_sessions"].pop(saved_key(handle), None) is not None:
                if state.exclusive_audit_session in (flush_handle,
                                                     flush_handle ^ OTHER_SESSION_TYPE):
                    state.exclusive_audit_session = None
                return
    elif state.objects.pop(flush_handle, None) is not None:
        return
    raise TpmError(TPM_RC.HANDLE, param=1)


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
