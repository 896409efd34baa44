"""Part 3 §12: object commands (Create, Load, ReadPublic, ObjectChangeAuth, Unseal,
CreateLoaded) and §24.1 CreatePrimary."""
import io

from construct import Container

from ...crypto import hashes, keys, protect
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPMA_OBJECT as OA
from ...wire.objects import TPM2B_SENSITIVE, TPMS_DERIVE, TPMT_PUBLIC, TPMT_PUBLIC_DERIVE
from ..subsystems import create
from ..subsystems.keyuse import binding_check
from ..subsystems.object_checks import (create_checks, is_derivation_parent, is_storage_parent,
                                        public_attributes_validation)
from ..subsystems.objects import (Object, compute_name, free_object_handle,
                                  hierarchy_qualified_name, public_bytes, qualified_name)

PRIMARY_LABEL = b"Primary Object Creation"


def _sym_def(parent_public):
    p = parent_public.parameters
    return p.sym if parent_public.type == TPM_ALG.SYMCIPHER else p.symmetric


def _sym_bits(parent_public) -> int:
    return _sym_def(parent_public).keyBits


def _sym_alg(parent_public):
    """The parent's symmetric cipher (AES or SM4) that protects its children."""
    return _sym_def(parent_public).algorithm


def _parent(tpm, handle):
    obj = tpm.state.object(handle)
    if not is_storage_parent(obj.public):
        raise TpmError(TPM_RC.TYPE, handle=1)
    return obj


def _checked(parent_attrs, in_public, in_sensitive):
    """The template checks of Create and CreatePrimary (errors name inPublic, parameter 2)
    and the userAuth size check (inSensitive, parameter 1); returns inSensitive with the
    userAuth as it will be kept."""
    try:
        create_checks(parent_attrs, in_public, len(in_sensitive.data))
    except TpmError as e:
        raise e.located(param=2)
    try:
        auth = create.adjust_auth(in_sensitive.userAuth, in_public.nameAlg)
    except TpmError as e:
        raise e.located(param=1)
    return Container(in_sensitive, userAuth=auth)


def create_primary(tpm, ctx, hierarchy, in_sensitive, in_public, outside_info, creation_pcr):
    """Part 3 §24.1: the key is a function of the hierarchy's seed and the template."""
    state = tpm.state
    handle = free_object_handle(state)
    in_sensitive = _checked(None, in_public, in_sensitive)
    public, raw, sensitive, key = primary_material(state, hierarchy, in_public, in_sensitive)
    name = compute_name(public.nameAlg, raw)
    hq = hierarchy_qualified_name(hierarchy)
    data, digest = create.creation_data(tpm, ctx, public.nameAlg, TPM_ALG.NULL, hq, hq,
                                        creation_pcr, outside_info)
    ticket = create.creation_ticket(tpm, hierarchy, name, digest)
    state.objects[handle] = Object(public=public, public_bytes=raw, sensitive=sensitive,
                                   hierarchy=hierarchy, name=name,
                                   qualified_name=qualified_name(hq, name, public.nameAlg),
                                   primary=True, key=key)
    return (handle, raw, data, digest, ticket, name)


PRIMARY_CACHE_SIZE = 16


def primary_material(state, hierarchy, template, in_sensitive):
    """A primary object's key: a pure function of the hierarchy's seed, the template and the
    sensitive data (Part 1 §27.5), so the last few are kept in RAM and a repeated
    CreatePrimary (the common pattern of tools that do not keep contexts) skips the RSA prime
    search. The seed is part of the key: a new seed (TPM Reset for the null hierarchy,
    Clear, ChangeEPS/PPS) never hits an old entry."""
    seed = state.primary_seed(hierarchy)
    template_name = compute_name(template.nameAlg, public_bytes(template))
    cache_key = (hashes.digest(TPM_ALG.SHA256, seed), template_name, in_sensitive.data)
    cached = state.primary_cache.pop(cache_key, None)
    if cached is None:
        stream = keys.KdfDrbg(template.nameAlg, seed, PRIMARY_LABEL,
                              template_name + in_sensitive.data)
        public, sensitive, key = create.generate(template, Container(in_sensitive, userAuth=b""),
                                                 stream)
        cached = public, public_bytes(public), sensitive, key
    state.primary_cache[cache_key] = cached            # most recently used last
    while len(state.primary_cache) > PRIMARY_CACHE_SIZE:
        del state.primary_cache[next(iter(state.primary_cache))]
    public, raw, sensitive, key = cached
    return public, raw, Container(sensitive, authValue=in_sensitive.userAuth), key


def create_(tpm, ctx, parent_handle, in_sensitive, in_public, outside_info, creation_pcr):
    """Part 3 §12.1: a new ordinary object, returned protected by its parent."""
    state = tpm.state
    parent = _parent(tpm, parent_handle)
    in_sensitive = _checked(parent.attributes, in_public, in_sensitive)
    stream = keys.EntropyStream(state.drbg.generate)
    public, sensitive, _key = create.generate(in_public, in_sensitive, stream)
    raw = public_bytes(public)
    name = compute_name(public.nameAlg, raw)
    data, digest = create.creation_data(tpm, ctx, public.nameAlg, parent.public.nameAlg,
                                        parent.name, parent.qualified_name, creation_pcr,
                                        outside_info)
    ticket = create.creation_ticket(tpm, parent.hierarchy, name, digest)
    private = protect.protect(TPM2B_SENSITIVE.build(sensitive), name, parent.sensitive.seedValue,
                              parent.public.nameAlg, _sym_bits(parent.public),
                              iv=state.drbg.generate(16), sym_alg=_sym_alg(parent.public))
    return (private, raw, data, digest, ticket)


def load(tpm, ctx, parent_handle, in_private, in_public):
    """Part 3 §12.2: check the blob's integrity under the parent, then the key's binding."""
    state = tpm.state
    parent = _parent(tpm, parent_handle)
    handle = free_object_handle(state)
    try:
        public_attributes_validation(parent.attributes, in_public)
    except TpmError as e:
        raise e.located(param=2)
    raw = public_bytes(in_public)
    name = compute_name(in_public.nameAlg, raw)
    try:
        blob = protect.unprotect(in_private, name, parent.sensitive.seedValue,
                                 parent.public.nameAlg, _sym_bits(parent.public), with_iv=True,
                                 sym_alg=_sym_alg(parent.public))
    except TpmError as e:           # INTEGRITY, or the outer wrap itself is malformed
        raise e.located(param=1)
    try:
        sensitive = TPM2B_SENSITIVE.parse(blob)     # what decrypted must be a whole sensitive
    except (TpmError, ValueError):
        raise TpmError(TPM_RC.SENSITIVE, param=1) from None
    if sensitive is None or sensitive.sensitiveType != in_public.type:
        raise TpmError(TPM_RC.TYPE, param=2)
    key = binding_check(in_public, sensitive)
    state.objects[handle] = Object(public=in_public, public_bytes=raw, sensitive=sensitive,
                                   hierarchy=parent.hierarchy, name=name,
                                   qualified_name=qualified_name(parent.qualified_name, name,
                                                                 in_public.nameAlg),
                                   key=key)
    return (handle, name)


def read_public(tpm, ctx, object_handle):
    """Part 3 §12.4; a sequence object has no public area to read."""
    obj = tpm.state.object(object_handle)
    if obj.public.type == TPM_ALG.NULL:
        raise TpmError(TPM_RC.SEQUENCE, handle=1)
    return (obj.public_bytes, obj.name, obj.qualified_name)


def unseal(tpm, ctx, item_handle):
    """Part 3 §12.7: only a sealed data object (KEYEDHASH, neither sign nor decrypt)."""
    obj = tpm.state.object(item_handle)
    if obj.public.type != TPM_ALG.KEYEDHASH:
        raise TpmError(TPM_RC.TYPE, handle=1)
    if obj.attributes & (OA.DECRYPT | OA.SIGN_ENCRYPT | OA.RESTRICTED):
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    return (obj.sensitive.sensitive,)


def object_change_auth(tpm, ctx, object_handle, parent_handle, new_auth):
    """Part 3 §12.8: a new private blob with the new authValue; the loaded object keeps the
    old one (load the new blob to use it)."""
    state = tpm.state
    obj = state.object(object_handle)
    if obj.public.type == TPM_ALG.NULL:         # a sequence
        raise TpmError(TPM_RC.TYPE, handle=1)
    try:
        new_auth = create.adjust_auth(new_auth, obj.public.nameAlg)
    except TpmError as e:
        raise e.located(param=1)
    parent = state.object(parent_handle) if parent_handle >> 24 in (0x80, 0x81) else None
    parent_qn = parent.qualified_name if parent is not None else parent_handle.to_bytes(4, "big")
    if (parent is None or qualified_name(parent_qn, obj.name, obj.public.nameAlg)
            != obj.qualified_name):
        raise TpmError(TPM_RC.TYPE, handle=2)
    sensitive = Container(obj.sensitive, authValue=new_auth)
    private = protect.protect(TPM2B_SENSITIVE.build(sensitive), obj.name,
                              parent.sensitive.seedValue, parent.public.nameAlg,
                              _sym_bits(parent.public), iv=state.drbg.generate(16),
                              sym_alg=_sym_alg(parent.public))
    return (private,)


def create_loaded(tpm, ctx, parent_handle, in_sensitive, in_public):
    """Part 3 §12.9: a primary (hierarchy parent), an ordinary object already loaded (storage
    parent), or a key derived from a derivation parent's secret and a label and context."""
    state = tpm.state
    parent = None if parent_handle >> 24 == 0x40 else state.object(parent_handle)
    derivation = parent is not None and is_derivation_parent(parent.public)
    if parent is not None and not derivation and not is_storage_parent(parent.public):
        raise TpmError(TPM_RC.TYPE, handle=1)
    handle = free_object_handle(state)
    try:
        structure = TPMT_PUBLIC_DERIVE if derivation else TPMT_PUBLIC
        stream = io.BytesIO(in_public)
        template = structure._parsereport(stream, Container(), "(inPublic)")
        if stream.tell() != len(in_public):
            raise TpmError(TPM_RC.SIZE)
    except TpmError as e:
        raise e.located(param=2)
    try:
        auth = create.adjust_auth(in_sensitive.userAuth, template.nameAlg)
    except TpmError as e:
        raise e.located(param=1)
    data = in_sensitive.data
    if derivation:
        if template.type == TPM_ALG.RSA:
            raise TpmError(TPM_RC.TYPE, param=2)
        if template.objectAttributes & OA.SENSITIVEDATAORIGIN:
            raise TpmError(TPM_RC.ATTRIBUTES)
        try:
            public_attributes_validation(parent.attributes, template)
        except TpmError as e:
            raise e.located(param=2)
        label, context = template.unique.label, template.unique.context
        if data:    # a TPMS_DERIVE in the sensitive data overrides the template's
            try:
                override = TPMS_DERIVE.parse(data)
            except (TpmError, ValueError):
                raise TpmError(TPM_RC.VALUE, param=1) from None
            label = override.label or label
            context = override.context or context
        xor = parent.public.parameters.scheme.details
        stream = keys.KdfDrbg(xor.hashAlg, parent.sensitive.sensitive, label, context)
        template = Container(template, unique=_empty_unique(template.type))
        in_sensitive = Container(userAuth=auth, data=b"")
    else:
        try:
            create_checks(None if parent is None else parent.attributes, template, len(data))
        except TpmError as e:
            raise e.located(param=2)
        in_sensitive = Container(in_sensitive, userAuth=auth)
    if parent is None:
        public, raw, sensitive, key = primary_material(state, parent_handle, template,
                                                       in_sensitive)
    else:
        if not derivation:
            stream = keys.EntropyStream(state.drbg.generate)
        public, sensitive, key = create.generate(template, in_sensitive, stream)
        raw = public_bytes(public)
    name = compute_name(public.nameAlg, raw)
    if parent is None:
        hierarchy, parent_qn = parent_handle, hierarchy_qualified_name(parent_handle)
    else:
        hierarchy, parent_qn = parent.hierarchy, parent.qualified_name
    private = b""
    if parent is not None and not derivation:
        private = protect.protect(TPM2B_SENSITIVE.build(sensitive), name,
                                  parent.sensitive.seedValue, parent.public.nameAlg,
                                  _sym_bits(parent.public), iv=state.drbg.generate(16),
                                  sym_alg=_sym_alg(parent.public))
    state.objects[handle] = Object(public=public, public_bytes=raw, sensitive=sensitive,
                                   hierarchy=hierarchy, name=name,
                                   qualified_name=qualified_name(parent_qn, name,
                                                                 public.nameAlg),
                                   primary=parent is None, key=key)
    return (handle, private, raw, name)


def _empty_unique(object_type):
    return Container(x=b"", y=b"") if object_type == TPM_ALG.ECC else b""
