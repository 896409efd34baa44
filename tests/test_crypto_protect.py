"""Sensitive-area protection (ctpm.crypto.protect), checked against independent
computations and against tpm2-pytss' duplication (utils.wrap/unwrap) and credential
(utils.make_credential) code."""
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from tpm2_pytss import utils
from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.internal.crypto import _generate_seed, _kdfa, _secret_to_seed
from tpm2_pytss.types import (TPM2B_DIGEST, TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE,
                              TPM2B_PUBLIC, TPM2B_SENSITIVE, TPMT_PUBLIC, TPMT_SENSITIVE,
                              TPMT_SYM_DEF_OBJECT, TPMU_SYM_KEY_BITS, TPMU_SYM_MODE)

from ctpm.crypto.keys import (KdfDrbg, ecc_private_from_stream, ecc_private_key,
                              rsa_from_stream, rsa_private_key)
from ctpm.engine.subsystems.objects import compute_name as object_name, qualified_name as _qn
from ctpm.crypto.protect import (IntegrityError, ProtectionError, inner_unwrap, inner_wrap,
                                 protect, unprotect)
from ctpm.errors import TpmError
from ctpm.wire.constants import TPM_ALG, TPM_ECC_CURVE, TPM_RC

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:   # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.modes import CFB

SHA1, SHA256, SHA384, SHA512 = TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512
HNAME = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384", SHA512: "sha512"}
SEED = bytes(range(32))
# A TPM2B_SENSITIVE-shaped plaintext: size, type KEYEDHASH, authValue, seedValue, data.
SENS = (struct.pack(">HH", 2 + 2 + 32 + 2 + 32 + 2 + 5, TPM_ALG.KEYEDHASH)
        + struct.pack(">H", 32) + b"A" * 32 + struct.pack(">H", 32) + b"S" * 32
        + struct.pack(">H", 5) + b"hello")
NAME = object_name(SHA256, b"some TPMT_PUBLIC")


def independent_outer(sens, name, seed, alg, sym_bits, iv=None):
    """The outer wrap recomputed from tpm2-pytss' KDFa (cryptography KBKDFHMAC), the stdlib
    HMAC and cryptography's AES-CFB, following Object_spt.c's ProduceOuterWrap."""
    key = _kdfa(alg, seed, b"STORAGE", name, b"", sym_bits)
    enc = Cipher(algorithms.AES(key), CFB(iv or bytes(16))).encryptor()
    covered = b"" if iv is None else struct.pack(">H", 16) + iv
    covered += enc.update(sens) + enc.finalize()
    size = hmac.new(b"", b"", HNAME[alg]).digest_size
    hkey = _kdfa(alg, seed, b"INTEGRITY", b"", b"", 8 * size)
    mac = hmac.new(hkey, covered + name, HNAME[alg]).digest()
    return struct.pack(">H", len(mac)) + mac + covered


@pytest.mark.parametrize("alg", [SHA1, SHA256, SHA384, SHA512])
@pytest.mark.parametrize("sym_bits", [128, 192, 256])
@pytest.mark.parametrize("iv", [None, bytes(range(16))])
def test_round_trip_and_independent_computation(alg, sym_bits, iv):
    blob = protect(SENS, NAME, SEED, alg, sym_bits, iv=iv)
    assert blob == independent_outer(SENS, NAME, SEED, alg, sym_bits, iv)
    digest_size = len(blob) - len(SENS) - 2 - (0 if iv is None else 18)
    assert digest_size == {SHA1: 20, SHA256: 32, SHA384: 48, SHA512: 64}[alg]
    assert SENS not in blob and SENS[:8] not in blob
    assert unprotect(blob, NAME, SEED, alg, sym_bits, with_iv=iv is not None) == SENS


def test_iv_layout():
    a = protect(SENS, NAME, SEED, SHA256, iv=b"\x01" * 16)
    b = protect(SENS, NAME, SEED, SHA256, iv=b"\x02" * 16)
    assert a[34:52] == b"\x00\x10" + b"\x01" * 16
    assert a[52:] != b[52:]                      # another IV, another ciphertext
    assert a == protect(SENS, NAME, SEED, SHA256, iv=b"\x01" * 16)
    z = protect(SENS, NAME, SEED, SHA256)
    assert z == protect(SENS, NAME, SEED, SHA256)     # zero IV: deterministic
    # the zero-IV layout is not the IV layout with a zero IV
    assert protect(SENS, NAME, SEED, SHA256, iv=bytes(16))[52:] == z[34:]
    with pytest.raises(ValueError):
        protect(SENS, NAME, SEED, SHA256, iv=b"short")
    with pytest.raises(ValueError):
        protect(SENS, NAME, SEED, SHA256, 64)


@pytest.mark.parametrize("iv", [None, os.urandom(16)])
def test_any_change_is_refused(iv):
    with_iv = iv is not None
    blob = protect(SENS, NAME, SEED, SHA256, iv=iv)
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= bit
            with pytest.raises(ProtectionError) as e:
                unprotect(bytes(bad), NAME, SEED, SHA256, with_iv=with_iv)
            if i >= 2:               # the digest, IV or ciphertext: the HMAC fails
                assert isinstance(e.value, IntegrityError) and e.value.rc == TPM_RC.INTEGRITY
            else:                    # the digest's size field: as the unmarshaler fails
                assert e.value.rc in (TPM_RC.INTEGRITY, TPM_RC.SIZE, TPM_RC.INSUFFICIENT)
    for cut in range(len(blob)):
        with pytest.raises(ProtectionError):
            unprotect(blob[:cut], NAME, SEED, SHA256, with_iv=with_iv)
    with pytest.raises(IntegrityError):
        unprotect(blob + b"\0", NAME, SEED, SHA256, with_iv=with_iv)
    for name, seed, alg in ((NAME[:-1] + b"\0", SEED, SHA256), (NAME, SEED[::-1], SHA256),
                            (NAME, SEED, SHA384)):
        with pytest.raises(IntegrityError):
            unprotect(blob, name, seed, alg, with_iv=with_iv)
    # A wrong key size is not detected by the HMAC (it does not depend on it): garbage out.
    assert unprotect(blob, NAME, SEED, SHA256, 256, with_iv=with_iv) != SENS


def test_error_codes():
    assert issubclass(ProtectionError, TpmError)
    with pytest.raises(ProtectionError) as e:
        unprotect(b"", NAME, SEED, SHA256)
    assert e.value.rc == TPM_RC.INSUFFICIENT
    with pytest.raises(ProtectionError) as e:
        unprotect(b"\x00\x41" + bytes(100), NAME, SEED, SHA256)       # 65 > sizeof(TPMU_HA)
    assert e.value.rc == TPM_RC.SIZE
    with pytest.raises(ProtectionError) as e:
        unprotect(b"\x00\x20" + bytes(31), NAME, SEED, SHA256)
    assert e.value.rc == TPM_RC.INSUFFICIENT
    with pytest.raises(IntegrityError):
        unprotect(b"\x00\x00", NAME, SEED, SHA256)
    # An authentic blob whose TPM2B_IV is not one block: TPM_RC_VALUE (checked after the HMAC).
    for covered, rc in ((b"\x00\x0f" + bytes(15) + b"ciphertext", TPM_RC.VALUE),
                        (b"\x00\x11" + bytes(17) + b"ciphertext", TPM_RC.SIZE),
                        (b"\x00\x10" + bytes(15), TPM_RC.INSUFFICIENT),
                        (b"\x00", TPM_RC.INSUFFICIENT)):
        hkey = _kdfa(SHA256, SEED, b"INTEGRITY", b"", b"", 256)
        mac = hmac.new(hkey, covered + NAME, "sha256").digest()
        with pytest.raises(ProtectionError) as e:
            unprotect(b"\x00\x20" + mac + covered, NAME, SEED, SHA256, with_iv=True)
        assert e.value.rc == rc
    # located() lets the engine name the parameter
    err = IntegrityError().located(param=1)
    assert err.code == TPM_RC.INTEGRITY | 0x040 | 0x100


def test_inner_wrap():
    key = bytes(range(16))
    blob = inner_wrap(SENS, NAME, SHA256, key)
    assert len(blob) == 2 + 32 + len(SENS)
    assert inner_unwrap(blob, NAME, SHA256, key) == SENS
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(ProtectionError):
            inner_unwrap(bytes(bad), NAME, SHA256, key)
    with pytest.raises(ProtectionError):
        inner_unwrap(blob, NAME, SHA384, key)
    with pytest.raises(ProtectionError):
        inner_unwrap(blob, NAME, SHA256, bytes(16))


def test_names():
    import hashlib
    assert object_name(SHA256, b"pub") == b"\x00\x0b" + hashlib.sha256(b"pub").digest()
    assert object_name(SHA1, b"pub") == b"\x00\x04" + hashlib.sha1(b"pub").digest()
    qn = _qn(b"\x40\x00\x00\x01", NAME, SHA256)
    assert qn == b"\x00\x0b" + hashlib.sha256(b"\x40\x00\x00\x01" + NAME).digest()


# ----------------------------------------------------------- against tpm2-pytss' utilities

AES128CFB = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(sym=128),
                                mode=TPMU_SYM_MODE(sym=TPM2_ALG.CFB))


def _pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _parent(kind):
    """A storage parent whose key ctpm made, as tpm2-pytss structures."""
    stream = KdfDrbg(SHA256, SEED, b"parent", kind.encode())
    if kind == "rsa":
        key = rsa_private_key(*rsa_from_stream(stream, 2048))
    else:
        key = ecc_private_key(TPM_ECC_CURVE.NIST_P256,
                              ecc_private_from_stream(stream, TPM_ECC_CURVE.NIST_P256))
    attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH
             | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
    pub = TPMT_PUBLIC.from_pem(_pem(key), nameAlg=TPM2_ALG.SHA256, objectAttributes=attrs,
                               symmetric=AES128CFB)
    return pub, TPMT_SENSITIVE.from_pem(_pem(key))


def _object(name_alg):
    key = ecc_private_key(TPM_ECC_CURVE.NIST_P384,
                          ecc_private_from_stream(KdfDrbg(SHA256, SEED, b"child"),
                                                  TPM_ECC_CURVE.NIST_P384))
    pub = TPM2B_PUBLIC.from_pem(_pem(key), nameAlg=name_alg)
    sens = TPM2B_SENSITIVE.from_pem(_pem(key))
    return pub, sens, bytes(pub.get_name())


@pytest.fixture(scope="module", params=["rsa", "ecc"])
def parent(request):
    return _parent(request.param)


@pytest.mark.parametrize("inner", [False, True])
def test_unprotect_pytss_duplicate(parent, inner):
    """utils.wrap (Part 1 §23.3.2 duplication) -> our unprotect (+ inner_unwrap)."""
    ppub, psens = parent
    pub, sens, name = _object(TPM2_ALG.SHA384)
    assert name == object_name(SHA384, pub.publicArea.marshal())
    symkey, dup, encseed = utils.wrap(ppub, pub, sens, symdef=AES128CFB if inner else None)
    seed = _secret_to_seed(psens, ppub, b"DUPLICATE\x00", encseed)
    data = unprotect(bytes(dup), name, seed, SHA256, 128)      # new parent's nameAlg
    if inner:
        data = inner_unwrap(data, name, SHA384, bytes(symkey))  # the object's nameAlg
    assert data == sens.marshal()


@pytest.mark.parametrize("inner", [False, True])
def test_pytss_unwraps_our_duplicate(parent, inner):
    """Our protect (+ inner_wrap) -> utils.unwrap."""
    ppub, psens = parent
    pub, sens, name = _object(TPM2_ALG.SHA256)
    seed, encseed = _generate_seed(ppub, b"DUPLICATE\x00")
    data = sens.marshal()
    symkey = os.urandom(16) if inner else None
    if inner:
        data = inner_wrap(data, name, SHA256, symkey)
    dup = protect(data, name, seed, SHA256, 128)
    out = utils.unwrap(ppub, psens, pub, TPM2B_PRIVATE(dup),
                       TPM2B_ENCRYPTED_SECRET(secret=encseed), symkey,
                       AES128CFB if inner else None)
    assert out.marshal() == sens.marshal()


def test_unprotect_pytss_credential(parent):
    """utils.make_credential (SecretToCredential's outer wrap, no IV) -> our unprotect."""
    ppub, psens = parent
    name = object_name(SHA256, b"the key the credential is for")
    credblob, secret = utils.make_credential(ppub, b"credential value", name)
    seed = _secret_to_seed(psens, ppub, b"IDENTITY\x00", secret)
    data = unprotect(bytes(credblob), name, seed, SHA256, 128)
    assert data == TPM2B_DIGEST(b"credential value").marshal()
    # and the same blob again from our side
    assert protect(data, name, seed, SHA256, 128) == bytes(credblob)
