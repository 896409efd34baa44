"""TPM2_ECC_Encrypt / TPM2_ECC_Decrypt (Part 3 §14.8-14.9, CC 0x199/0x19A; libtss2 3.2.1 and
tpm2-pytss have no call for them, so they go as raw commands) against an independent
implementation of the scheme (Part 1 Annex D) with `cryptography` and hashlib:

    C1 = [k]G, (x2, y2) = [k]Q = [d]C1, C2 = M xor KDF2_H(x2 || y2), C3 = H(x2 || M || y2)

The key is made by `cryptography` and loaded with LoadExternal, so the test knows d and can
compute [k*d]G itself for the points it makes; for the TPM's C1 it gets x2 by ECDH and y2 as
the square root that makes C3 match.
"""
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.test_context import primary
from tests.tpmcmd import b2, cmd, params, pw_session, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss.constants import TPMA_OBJECT  # noqa: E402
from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE  # noqa: E402

RH_NULL = 0x40000007
CC_ENCRYPT, CC_DECRYPT = 0x199, 0x19A
KDF2, NULL = 0x21, 0x10
SHA256, SHA384 = 0x0B, 0x0C
HASHES = {SHA256: "sha256", SHA384: "sha384"}
CURVES = {"p256": (ec.SECP256R1(), 32, SHA256), "p384": (ec.SECP384R1(), 48, SHA384)}
P = {32: 2**256 - 2**224 + 2**192 + 2**96 - 1,
     48: 2**384 - 2**128 - 2**96 + 2**32 - 1}
DECRYPT_ATTRS = TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH


def kdf2(name, z, size):
    out, counter = b"", 1
    while len(out) < size:
        out += hashlib.new(name, z + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:size]


def load_external(execute, private_key, attrs=DECRYPT_ATTRS, kdf=None, expect=0):
    pem = private_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public = TPM2B_PUBLIC.from_pem(pem, objectAttributes=attrs).marshal()
    if kdf is not None:
        # libtss2 3.2.1 cannot marshal a KDF2 scheme: put it in the TPMS_ECC_PARMS by hand
        # (after symmetric NULL, scheme NULL and the curve: the kdf, TPM_ALG_NULL)
        area = public[2:]
        i = 2 + 2 + 4 + 2 + 2 + 2 + 2                 # type nameAlg attrs policy sym scheme curve
        assert area[i:i + 2] == u16(NULL)
        area = area[:i] + u16(KDF2) + u16(kdf) + area[i + 2:]
        public = b2(area)
    sensitive = TPM2B_SENSITIVE.from_pem(pem)
    r = execute(cmd(0x167, sensitive.marshal() + public + u32(RH_NULL)))
    assert rc(r) == expect, hex(rc(r))
    return struct.unpack(">I", r[10:14])[0] if expect == 0 else None


def scheme(alg=KDF2, hash_alg=SHA256):
    return u16(alg) + (u16(hash_alg) if alg != NULL else b"")


def point(x: bytes, y: bytes) -> bytes:
    body = b2(x) + b2(y)
    return u16(len(body)) + body


def encrypt(execute, handle, message, sch):
    r = execute(cmd(CC_ENCRYPT, b2(message) + sch, handles=[handle]))
    if rc(r):
        return rc(r), None
    out = params(r)
    size = struct.unpack(">H", out[:2])[0]
    c1 = out[2:2 + size]
    xs = struct.unpack(">H", c1[:2])[0]
    x, y = c1[2:2 + xs], c1[4 + xs:]
    i = 2 + size
    n = struct.unpack(">H", out[i:i + 2])[0]
    c2 = out[i + 2:i + 2 + n]
    i += 2 + n
    m = struct.unpack(">H", out[i:i + 2])[0]
    return 0, (x, y, c2, out[i + 2:i + 2 + m])


def decrypt(execute, handle, c1, c2, c3, sch):
    r = execute(cmd(CC_DECRYPT, point(*c1) + b2(c2) + b2(c3) + sch, handles=[handle],
                    sessions=[pw_session()]))
    if rc(r):
        return rc(r), None
    out = params(r)
    return 0, out[2:2 + struct.unpack(">H", out[:2])[0]]


def independent_encrypt(private_key, message, name, size):
    """C1, C2, C3 for `message` to the key's public point, with cryptography and hashlib."""
    curve = private_key.curve
    k = ec.generate_private_key(curve)
    c1 = k.public_key().public_numbers()
    n = {32: int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16),
         48: int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                 "581A0DB248B0A77AECEC196ACCC52973", 16)}[size]
    s = k.private_numbers().private_value * private_key.private_numbers().private_value % n
    z = ec.derive_private_key(s, curve).public_key().public_numbers()
    x2, y2 = z.x.to_bytes(size, "big"), z.y.to_bytes(size, "big")
    c2 = bytes(a ^ b for a, b in zip(message, kdf2(name, x2 + y2, len(message))))
    return ((c1.x.to_bytes(size, "big"), c1.y.to_bytes(size, "big")), c2,
            hashlib.new(name, x2 + message + y2).digest())


def independent_decrypt(private_key, c1x, c1y, c2, c3, name, size):
    """M from the TPM's C1, C2, C3: x2 by ECDH, y2 the root of the curve equation that
    makes C3 match (exactly one of the two may)."""
    curve = private_key.curve
    peer = ec.EllipticCurvePublicNumbers(int.from_bytes(c1x, "big"), int.from_bytes(c1y, "big"),
                                         curve).public_key()
    x2 = private_key.exchange(ec.ECDH(), peer)
    p = P[size]
    b = {32: 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
         48: int("B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875A"
                 "C656398D8A2ED19D2A85C8EDD3EC2AEF", 16)}[size]
    x = int.from_bytes(x2, "big")
    y = pow((x ** 3 - 3 * x + b) % p, (p + 1) // 4, p)
    found = []
    for cand in (y, p - y):
        y2 = cand.to_bytes(size, "big")
        message = bytes(a ^ m for a, m in zip(c2, kdf2(name, x2 + y2, len(c2))))
        if hashlib.new(name, x2 + message + y2).digest() == c3:
            found.append(message)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 200, 1024])
def test_encrypt_and_decrypt_against_cryptography(ctpm_started_tpm, curve, size):
    execute = ctpm_started_tpm.execute
    ec_curve, width, hash_alg = CURVES[curve]
    name = HASHES[hash_alg]
    key = ec.generate_private_key(ec_curve)
    handle = load_external(execute, key)
    message = bytes((i * 7 + 3) & 0xFF for i in range(size))
    # the TPM encrypts, we decrypt
    code, out = encrypt(execute, handle, message, scheme(KDF2, hash_alg))
    assert code == 0
    c1x, c1y, c2, c3 = out
    assert len(c1x) == len(c1y) == width and len(c2) == size
    assert independent_decrypt(key, c1x, c1y, c2, c3, name, width) == message
    # we encrypt, the TPM decrypts
    c1, c2, c3 = independent_encrypt(key, message, name, width)
    assert decrypt(execute, handle, c1, c2, c3, scheme(KDF2, hash_alg)) == (0, message)
    # a changed C3 or C2 is TPM_RC_VALUE
    assert decrypt(execute, handle, c1, c2, bytes([c3[0] ^ 1]) + c3[1:],
                   scheme(KDF2, hash_alg))[0] == 0x084
    if size:
        assert decrypt(execute, handle, c1, bytes([c2[0] ^ 1]) + c2[1:], c3,
                       scheme(KDF2, hash_alg))[0] == 0x084


def test_round_trip_in_the_tpm_and_fresh_ephemeral_keys(ctpm_started_tpm):
    execute = ctpm_started_tpm.execute
    handle = load_external(execute, ec.generate_private_key(ec.SECP256R1()))
    outs = [encrypt(execute, handle, b"same message", scheme())[1] for _ in range(3)]
    assert len({o[0] for o in outs}) == 3                     # a new k every time
    for c1x, c1y, c2, c3 in outs:
        assert decrypt(execute, handle, (c1x, c1y), c2, c3, scheme()) == (0, b"same message")


def test_schemes_keys_and_points(ctpm_started_tpm):
    execute = ctpm_started_tpm.execute
    key = ec.generate_private_key(ec.SECP256R1())
    plain = load_external(execute, key)
    restricted = primary(execute)                  # an ECC storage key (restricted decrypt)
    signing = load_external(execute, ec.generate_private_key(ec.SECP256R1()),
                            attrs=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)
    m = b"message"
    # an ECC key's own kdf must be TPM_ALG_NULL (SchemeChecks: TPM_RC_KDF, parameter 2), so
    # the command's scheme is the one used; NULL there is TPM_RC_SCHEME on inScheme
    load_external(execute, key, kdf=SHA384, expect=0x2CC)
    assert encrypt(execute, plain, m, scheme(NULL))[0] == 0x2D2
    assert encrypt(execute, plain, m, scheme(0x20, SHA256))[0] == 0x2D2      # KDF1_SP800_56A
    assert encrypt(execute, plain, m, scheme(0x07, SHA256))[0] == 0x2D2      # MGF1
    code, (c1x, c1y, c2, c3) = encrypt(execute, plain, m, scheme(KDF2, SHA384))
    assert independent_decrypt(key, c1x, c1y, c2, c3, "sha384", 32) == m
    assert decrypt(execute, plain, (c1x, c1y), c2, c3, scheme(KDF2, SHA384)) == (0, m)
    assert decrypt(execute, plain, (c1x, c1y), c2, c3, scheme(NULL))[0] == 0x4D2
    assert decrypt(execute, plain, (c1x, c1y), c2, c3, scheme(KDF2, SHA256))[0] == 0x084
    # decryption needs an unrestricted decryption key; encryption any ECC key
    assert decrypt(execute, restricted, (c1x, c1y), c2, c3, scheme())[0] == 0x182
    assert decrypt(execute, signing, (c1x, c1y), c2, c3, scheme())[0] == 0x182
    assert encrypt(execute, signing, m, scheme())[0] == 0
    # C1 off the curve
    bad = (c1x, (int.from_bytes(c1y, "big") ^ 1).to_bytes(32, "big"))
    assert decrypt(execute, plain, bad, c2, c3, scheme())[0] == 0x1E7        # ECC_POINT, P1
    # an RSA key
    from cryptography.hazmat.primitives.asymmetric import rsa
    rsa_key = rsa.generate_private_key(65537, 2048)
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    r = execute(cmd(0x167, TPM2B_SENSITIVE.from_pem(pem).marshal()
                    + TPM2B_PUBLIC.from_pem(pem, objectAttributes=DECRYPT_ATTRS).marshal()
                    + u32(RH_NULL)))
    rsa_handle = struct.unpack(">I", r[10:14])[0]
    assert encrypt(execute, rsa_handle, m, scheme())[0] == 0x19C              # KEY, handle 1
    assert decrypt(execute, rsa_handle, (c1x, c1y), c2, c3, scheme())[0] == 0x19C
