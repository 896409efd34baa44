"""Making a new object's key and the evidence of its creation (Part 1 §27.5, §27.2).

`generate` turns a validated template and TPMS_SENSITIVE_CREATE into the public area with
its `unique` filled in and the TPMT_SENSITIVE, reading all key material from `stream`: a
`KdfDrbg` over the hierarchy's seed for primary objects (so they are reproducible), the
TPM's DRBG for ordinary ones.
"""
import hmac
import struct

from construct import Container

from ...crypto import hashes, keys
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_ST, TPMA_OBJECT as OA
from ...wire.objects import TPMS_CREATION_DATA
from ...wire.structures import HASH_SIZES
from .tickets import TICKET_HASH
from .pcr_banks import filter_selection

SYM_BLOCK = 16


def generate(public, in_sensitive, stream):
    """(public area with unique, TPMT_SENSITIVE, cryptography key or None)."""
    t = public.type
    name_alg = public.nameAlg
    data = in_sensitive.data
    key = None
    p = public.parameters
    if t == TPM_ALG.RSA:
        exponent = p.exponent or 65537
        if not keys.rsa_exponent_ok(p.exponent):
            raise TpmError(TPM_RC.RANGE)
        n, e, prime_p, q, d = keys.rsa_from_stream(stream, p.keyBits, exponent)
        key = keys.rsa_private_key(n, e, prime_p, q, d)
        unique = keys.int_to_bytes(n, p.keyBits // 8)
        secret = keys.int_to_bytes(prime_p, p.keyBits // 16)
    elif t == TPM_ALG.ECC:
        d = keys.ecc_private_from_stream(stream, p.curveID)
        key = keys.ecc_private_key(p.curveID, d)
        x, y = keys.ecc_public_xy(key)
        unique = Container(x=x, y=y)
        secret = keys.ecc_private_bytes(p.curveID, d)
    elif t == TPM_ALG.SYMCIPHER:
        size = p.sym.keyBits // 8
        if public.objectAttributes & OA.SENSITIVEDATAORIGIN:
            secret = stream.read(size)
        elif len(data) != size:
            raise TpmError(TPM_RC.KEY_SIZE)
        else:
            secret = data
        unique = None
    else:   # KEYEDHASH: an HMAC key, an XOR key or sealed data
        scheme = p.scheme
        hash_alg = scheme.details.hashAlg if scheme.scheme != TPM_ALG.NULL else name_alg
        if public.objectAttributes & OA.SENSITIVEDATAORIGIN:
            secret = stream.read(HASH_SIZES[hash_alg])
        else:
            if scheme.scheme == TPM_ALG.HMAC and len(data) > _hmac_block_size(hash_alg):
                raise TpmError(TPM_RC.SIZE)
            secret = data
        unique = None
    seed = stream.read(HASH_SIZES[name_alg])
    if unique is None:      # symmetric objects: unique hides the key behind the seed value
        unique = hashes.digest(name_alg, seed + secret)
    out = Container(public)
    out.unique = unique
    sensitive = Container(sensitiveType=t, authValue=in_sensitive.userAuth, seedValue=seed,
                          sensitive=secret)
    return out, sensitive, key


def _hmac_block_size(alg):
    return 128 if alg in (TPM_ALG.SHA384, TPM_ALG.SHA512) else 64


def adjust_auth(auth: bytes, name_alg) -> bytes:
    """userAuth may not be longer than the nameAlg digest, after trailing zeros go."""
    size = HASH_SIZES[name_alg]
    if len(auth) > size:
        auth = auth.rstrip(b"\0")
        if len(auth) > size:
            raise TpmError(TPM_RC.SIZE)
    return auth


def pcr_digest(state, name_alg, selection):
    """PCRComputeCurrentDigest: the selection without the PCRs not allocated (FilterPcr),
    and the digest of the selected values (of nothing, if none is selected)."""
    selection, values = filter_selection(state, selection)
    return selection, hashes.digest(name_alg, b"".join(values))


def creation_data(tpm, ctx, name_alg, parent_name_alg, parent_name, parent_qn, selection,
                  outside_info):
    """TPMS_CREATION_DATA and its digest (Part 3 §12.1, FillInCreationData)."""
    loc = ctx.locality
    selection, digest = pcr_digest(tpm.state, name_alg, selection)
    data = Container(
        pcrSelect=selection, pcrDigest=digest,
        locality=(1 << loc) if loc < 5 else loc, parentNameAlg=parent_name_alg,
        parentName=parent_name, parentQualifiedName=parent_qn, outsideInfo=outside_info)
    return data, hashes.digest(name_alg, TPMS_CREATION_DATA.build(data))


def creation_ticket(tpm, hierarchy, name, creation_hash):
    """TPMT_TK_CREATION (Part 2 §10.7.3): HMAC(proof, TPM_ST_CREATION || Name || hash)."""
    mac = hmac.new(tpm.state.proof(hierarchy), struct.pack(">H", TPM_ST.CREATION) + name
                   + creation_hash, TICKET_HASH).digest()
    return Container(tag=TPM_ST.CREATION, hierarchy=hierarchy, digest=mac)
