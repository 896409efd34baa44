"""Credentials and duplication: MakeCredential / ActivateCredential, Duplicate / Rewrap /
Import, and ECC_Parameters.

The client side is tpm2-pytss (`utils.make_credential`, `utils.wrap`, `utils.unwrap`), so
the blob formats are checked against an independent implementation; error codes are
compared with swtpm (libtpms) where the answer is deterministic. TPM2_Duplicate needs a
policy session (DUP role) that ctpm cannot start yet: its handler is driven directly, and
through the dispatcher only its authorization failure is checked.
"""
import struct

import pytest

from ctpm.engine.commands import duplication
from ctpm.testing import blocking
from ctpm.testing.plugin import tcti_string
from tests.peers import Swtpm, needs_swtpm, retrying
from tests.test_objects import (RH_ENDORSEMENT, RH_NULL, RH_OWNER, create, create_primary,
                                flush, load, primary_public, sensitive_create, split_create,
                                started, template)
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, pw_session, rc, u16

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESAPI, ESYS_TR  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_SU, TPMA_OBJECT  # noqa: E402
from tpm2_pytss.types import (TPM2B_DIGEST, TPM2B_ENCRYPTED_SECRET, TPM2B_NAME,  # noqa: E402
                              TPM2B_PRIVATE, TPM2B_PUBLIC,
                              TPM2B_SENSITIVE, TPM2B_SENSITIVE_CREATE, TPMT_PUBLIC,
                              TPMT_SYM_DEF_OBJECT, TPMU_SYM_KEY_BITS, TPMU_SYM_MODE)
from tpm2_pytss.utils import make_credential, unwrap, wrap  # noqa: E402

# Part 2 response codes, with the handle (H), parameter (P) or session number added
INTEGRITY, VALUE, SIZE, TYPE, ATTRIBUTES = 0x09F, 0x084, 0x095, 0x08A, 0x082
HANDLE, ECC_POINT, HIERARCHY, SYMMETRIC = 0x08B, 0x0A7, 0x085, 0x096
AUTH_UNAVAILABLE, AUTH_TYPE = 0x12F, 0x124


def P(rc_, n):
    return rc_ | 0x40 | (n << 8)


def H(rc_, n):
    return rc_ | (n << 8)


PARENTS = ["rsa2048:aes128cfb", "ecc256:aes128cfb", "ecc384:aes256cfb", "rsa3072:aes256cfb"]
AES128 = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(sym=128),
                             mode=TPMU_SYM_MODE(sym=TPM2_ALG.CFB))
NO_SYM = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
SEALED = 0x40                      # userWithAuth: a sealed data object that may move
PW = [pw_session()]


# -- helpers over raw commands ---------------------------------------------------------------

def handle_of(rsp):
    assert rc(rsp) == 0, hex(rc(rsp))
    return struct.unpack(">I", rsp[10:14])[0]


def read_public(execute, handle):
    """(TPM2B_PUBLIC bytes, Name) of a loaded object (TPM2_ReadPublic)."""
    body = params(execute(cmd(0x173, handles=[handle])))
    n = struct.unpack(">H", body[:2])[0]
    m = struct.unpack(">H", body[2 + n:4 + n])[0]
    return body[:2 + n], body[4 + n:4 + n + m]


def pytss_public(raw):
    return TPM2B_PUBLIC.unmarshal(raw)[0]


def split_2b(buf, count):
    out, i = [], 0
    for _ in range(count):
        n = struct.unpack(">H", buf[i:i + 2])[0]
        out.append(buf[i:i + 2 + n])
        i += 2 + n
    return out


def activate(activate_handle, key_handle, blob, secret, auth=b""):
    return cmd(0x147, blob + secret, handles=[activate_handle, key_handle],
               sessions=[pw_session(), pw_session(auth)])


def make_credential_cmd(handle, credential, name):
    return cmd(0x168, b2(credential) + b2(name), handles=[handle])


def import_cmd(parent, key, public, dup, seed, sym, auth=b""):
    return cmd(0x156, key + public + dup + seed + sym, handles=[parent],
               sessions=[pw_session(auth)])


def rewrap_cmd(old, new, dup, name, seed):
    return cmd(0x152, dup + b2(name) + seed, handles=[old, new], sessions=PW)


def unseal(execute, handle, auth=b""):
    r = execute(cmd(0x15E, handles=[handle], sessions=[pw_session(auth)]))
    return rc(r), params(r) if rc(r) == 0 else None


def sealed_object(data=b"moved secret", auth=b"obj-pw", attrs=SEALED):
    """A sealed data object made outside any TPM: (TPM2B_SENSITIVE, TPM2B_PUBLIC)."""
    sens, pub = TPM2B_SENSITIVE.keyedhash_from_secret(data, objectAttributes=attrs)
    sens.sensitiveArea.authValue = auth
    return sens, pub



def flip(blob: bytes, index: int) -> bytes:
    b = bytearray(blob)
    b[index] ^= 0x01
    return bytes(b)


# -- secret sharing -----------------------------------------------------------------------------

@pytest.mark.parametrize("alg,bits", [(TPM2_ALG.SHA1, 160), (TPM2_ALG.SHA256, 256),
                                      (TPM2_ALG.SHA256, 600), (TPM2_ALG.SHA384, 384),
                                      (TPM2_ALG.SHA512, 512)])
def test_kdfe_is_the_sp800_56c_one_step_kdf(alg, bits):
    """KDFe = SP 800-56C one-step KDF with OtherInfo = label(with NUL) || U || V, as
    `cryptography`'s ConcatKDFHash computes it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

    from ctpm.crypto.secret import kdfe
    h = {TPM2_ALG.SHA1: hashes.SHA1, TPM2_ALG.SHA256: hashes.SHA256,
         TPM2_ALG.SHA384: hashes.SHA384, TPM2_ALG.SHA512: hashes.SHA512}[alg]
    z, u, v = b"\x01" * 32, b"\x02" * 32, b"\x03" * 33
    expected = ConcatKDFHash(h(), bits // 8, b"DUPLICATE\0" + u + v).derive(z)
    assert kdfe(alg, z, b"DUPLICATE\0", u, v, bits) == expected


# -- MakeCredential / ActivateCredential ---------------------------------------------------------

def _identity(tpm, spec):
    """An EK-like restricted decryption key and an AK (signing key) with its Name."""
    ek, ek_pub = primary_public(tpm.execute(create_primary(RH_ENDORSEMENT, template(spec))))
    ak = handle_of(tpm.execute(create_primary(RH_OWNER, template("ecc256:ecdsa"))))
    return ek, ek_pub, ak, read_public(tpm.execute, ak)[1]


@pytest.mark.parametrize("spec", PARENTS + ["ecc521:aes256cfb"])
def test_client_made_credential_activates(spec):
    tpm = started()
    ek, ek_pub, ak, ak_name = _identity(tpm, spec)
    credential = b"a 32-byte credential for the AK!"
    blob, secret = make_credential(pytss_public(ek_pub), credential, TPM2B_NAME(ak_name))
    r = tpm.execute(activate(ak, ek, blob.marshal(), secret.marshal()))
    assert rc(r) == 0
    assert params(r) == b2(credential)


@pytest.mark.parametrize("spec", PARENTS)
def test_tpm_made_credential_activates_and_is_bound(spec):
    tpm = started()
    ek, ek_pub, ak, ak_name = _identity(tpm, spec)
    r = tpm.execute(make_credential_cmd(ek, b"secret", ak_name))
    assert rc(r) == 0
    blob, secret = split_2b(params(r), 2)
    r = tpm.execute(activate(ak, ek, blob, secret))
    assert rc(r) == 0 and params(r) == b2(b"secret")
    # the secret is fresh each time, the credential blob with it
    blob2, secret2 = split_2b(params(tpm.execute(make_credential_cmd(ek, b"secret", ak_name))), 2)
    assert secret2 != secret and blob2 != blob
    # every byte of the blob is covered by its HMAC
    for i in (3, 10, len(blob) - 1):
        assert rc(tpm.execute(activate(ak, ek, flip(blob, i), secret))) == P(INTEGRITY, 1)
    # the credential is bound to the Name: another object cannot activate it
    other = handle_of(tpm.execute(create_primary(RH_OWNER, template("rsa2048:rsassa"))))
    assert rc(tpm.execute(activate(other, ek, blob, secret))) == P(INTEGRITY, 1)
    # nor does another key's secret open it
    ek2 = handle_of(tpm.execute(create_primary(RH_OWNER, template(spec))))
    # (RSA: the secret may be above the other modulus, SIZE; else its OAEP fails, VALUE)
    assert rc(tpm.execute(activate(ak, ek2, blob, secret))) in (P(INTEGRITY, 1), P(VALUE, 2),
                                                                P(SIZE, 2))


def test_credential_errors():
    tpm = started()
    ek, ek_pub, ak, ak_name = _identity(tpm, "rsa2048:aes128cfb")
    # the credential is at most a nameAlg digest
    assert rc(tpm.execute(make_credential_cmd(ek, b"x" * 33, ak_name))) == P(SIZE, 1)
    assert rc(tpm.execute(make_credential_cmd(ek, b"x" * 32, ak_name))) == 0
    # only an asymmetric restricted decryption key makes or activates credentials
    assert rc(tpm.execute(make_credential_cmd(ak, b"x", ak_name))) == H(TYPE, 1)
    blob, secret = split_2b(params(tpm.execute(make_credential_cmd(ek, b"x", ak_name))), 2)
    assert rc(tpm.execute(activate(ek, ak, blob, secret))) == H(TYPE, 2)
    # RSA: a secret of the wrong size, or a wrong OAEP block
    assert rc(tpm.execute(activate(ak, ek, blob, b2(secret[2:-1])))) == P(SIZE, 2)
    assert rc(tpm.execute(activate(ak, ek, blob, flip(secret, 40)))) == P(VALUE, 2)
    # ECC: a point off the curve
    ecc, _, _, _ = _identity(tpm, "ecc256:aes128cfb")
    blob, secret = split_2b(params(tpm.execute(make_credential_cmd(ecc, b"x", ak_name))), 2)
    assert rc(tpm.execute(activate(ak, ecc, blob, secret))) == 0
    assert rc(tpm.execute(activate(ak, ecc, blob, flip(secret, 10)))) == P(ECC_POINT, 2)
    # the key's authorization (USER) is checked
    auth_fail_s2 = 0xA8E
    assert rc(tpm.execute(activate(ak, ecc, blob, secret, auth=b"wrong"))) == auth_fail_s2


@pytest.mark.parametrize("spec", ["rsa2048:aes128cfb", "ecc256:aes128cfb"])
def test_make_credential_with_an_external_public_key(spec):
    """What a credential server does (tpm2_makecredential with a TPM): TPM2_LoadExternal of
    the EK's public area, then MakeCredential; the TPM holding the EK activates it."""
    from ctpm.engine.tpm import Tpm
    tpm = started()
    ek, ek_pub, ak, ak_name = _identity(tpm, spec)
    server = Tpm.manufacture(seed=b"another TPM")
    assert rc(server.execute(STARTUP_CLEAR)) == 0
    loaded = handle_of(server.execute(cmd(0x167, b2(b"") + ek_pub + struct.pack(">I", RH_NULL))))
    r = server.execute(make_credential_cmd(loaded, b"from afar", ak_name))
    assert rc(r) == 0
    blob, secret = split_2b(params(r), 2)
    r = tpm.execute(activate(ak, ek, blob, secret))
    assert rc(r) == 0 and params(r) == b2(b"from afar")
    # without a nameAlg there is no hash for the secret nor room for a credential
    no_name = bytearray(ek_pub)
    no_name[4:6] = u16(TPM2_ALG.NULL)
    r = server.execute(cmd(0x167, b2(b"") + bytes(no_name) + struct.pack(">I", RH_NULL)))
    loaded = handle_of(r)
    assert rc(server.execute(make_credential_cmd(loaded, b"x", ak_name))) == P(SIZE, 1)
    if spec.startswith("rsa"):      # (swtpm answers the same; for ECC it goes on, see secret.py)
        assert rc(server.execute(make_credential_cmd(loaded, b"", ak_name))) == VALUE


def _credential_codes(execute):
    ek, ek_pub = primary_public(execute(create_primary(RH_ENDORSEMENT, template())))
    ecc, ecc_pub = primary_public(execute(create_primary(RH_OWNER,
                                                         template("ecc256:aes128cfb"))))
    ak = handle_of(execute(create_primary(RH_OWNER, template("ecc256:ecdsa"))))
    ak_name = read_public(execute, ak)[1]
    codes = []
    for key, pub in ((ek, ek_pub), (ecc, ecc_pub)):
        blob, secret = (x.marshal() for x in make_credential(pytss_public(pub), b"cred",
                                                             TPM2B_NAME(ak_name)))
        steps = [activate(ak, key, blob, secret),
                 activate(ak, key, flip(blob, 5), secret),
                 activate(ak, key, b2(blob[2:20]), secret),
                 activate(key, key, blob, secret),
                 activate(ak, ak, blob, secret),
                 activate(ak, key, blob, b2(secret[2:-2])),
                 activate(ak, key, blob, b2(b"")),
                 make_credential_cmd(key, b"x" * 33, ak_name),
                 make_credential_cmd(ak, b"x", ak_name),
                 make_credential_cmd(key, b"", b"")]
        for c in steps:
            r = execute(c)
            codes.append((rc(r), params(r) if c[6:10] == b"\0\0\x01\x47" and rc(r) == 0
                          else None))
    return codes


@needs_swtpm
@pytest.mark.swtpm
def test_credential_codes_as_swtpm():
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        assert _credential_codes(started().execute) == _credential_codes(retrying(sw.execute))
    finally:
        sw.close()


async def test_esapi_make_and_activate_credential(ctpm_server):
    """ESAPI's MakeCredential in ctpm, its ActivateCredential in ctpm, and a credential made
    by tpm2-pytss' client-side code."""
    def scenario():
        esapi = ESAPI(tcti_string(ctpm_server, "mssim"))
        try:
            esapi.startup(TPM2_SU.CLEAR)
            sens = TPM2B_SENSITIVE_CREATE()
            ek, ek_pub, *_ = esapi.create_primary(
                sens, TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(
                    "rsa2048:aes128cfb",
                    objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth"
                                     "|restricted|decrypt")), ESYS_TR.ENDORSEMENT)
            ak, ak_pub, *_ = esapi.create_primary(
                sens, TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(
                    "ecc256:ecdsa",
                    objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth"
                                     "|sign")), ESYS_TR.OWNER)
            _, name, _ = esapi.read_public(ak)
            blob, secret = esapi.make_credential(ek, TPM2B_DIGEST(b"from the TPM"), name)
            first = esapi.activate_credential(ak, ek, blob, secret)
            blob, secret = make_credential(ek_pub, b"from pytss", name)
            second = esapi.activate_credential(ak, ek, blob, secret)
            return bytes(first), bytes(second), bytes(ak_pub.get_name()) == bytes(name)
        finally:
            esapi.close()

    first, second, same_name = await blocking(scenario)
    assert (first, second, same_name) == (b"from the TPM", b"from pytss", True)


# -- Import -------------------------------------------------------------------------------------

def _import_and_unseal(tpm, parent, parent_pub, inner, auth=b"obj-pw", data=b"moved secret"):
    sens, pub = sealed_object(data, auth)
    key, dup, seed = wrap(pytss_public(parent_pub).publicArea, pub, sens, None,
                          AES128 if inner else None)
    r = tpm.execute(import_cmd(parent, key.marshal(), pub.marshal(), dup.marshal(),
                               seed.marshal(), (AES128 if inner else NO_SYM).marshal()))
    assert rc(r) == 0, hex(rc(r))
    private = params(r)
    item = handle_of(tpm.execute(load(parent, private, pub.marshal())))
    return item, private, pub


@pytest.mark.parametrize("inner", [False, True], ids=["outer-only", "inner-and-outer"])
@pytest.mark.parametrize("spec", PARENTS)
def test_import_of_a_wrapped_sealed_object(spec, inner):
    tpm = started()
    parent, parent_pub = primary_public(tpm.execute(create_primary(RH_OWNER, template(spec))))
    item, private, pub = _import_and_unseal(tpm, parent, parent_pub, inner)
    assert unseal(tpm.execute, item, b"obj-pw") == (0, b2(b"moved secret"))
    assert unseal(tpm.execute, item, b"other")[0] == 0x98E
    # the imported private is an ordinary one: a fresh IV each time, another parent refuses it
    other_spec = "rsa2048:aes128cfb" if spec.startswith("ecc") else "ecc256:aes128cfb"
    other = handle_of(tpm.execute(create_primary(RH_OWNER, template(other_spec))))
    assert rc(tpm.execute(load(other, private, pub.marshal()))) == P(INTEGRITY, 1)


@pytest.mark.parametrize("spec", ["rsa2048:rsassa", "ecc256:ecdsa", "rsa2048:aes128cfb"])
def test_import_of_an_external_key_keeps_its_name(spec):
    """A key made by `cryptography`, wrapped by tpm2-pytss: loads, with the client's Name."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    tpm = started()
    parent, parent_pub = primary_public(tpm.execute(create_primary(RH_OWNER, template())))
    if spec.startswith("ecc"):
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(65537, 2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    sens = TPM2B_SENSITIVE.from_pem(pem)
    attrs = (TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.DECRYPT if spec.endswith("cfb")
             else TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT)
    pub = TPM2B_PUBLIC.from_pem(pem, objectAttributes=attrs)
    key_out, dup, seed = wrap(pytss_public(parent_pub).publicArea, pub, sens, None, AES128)
    r = tpm.execute(import_cmd(parent, key_out.marshal(), pub.marshal(), dup.marshal(),
                               seed.marshal(), AES128.marshal()))
    assert rc(r) == 0, hex(rc(r))
    r = tpm.execute(load(parent, params(r), pub.marshal()))
    assert rc(r) == 0, hex(rc(r))
    item = handle_of(r)
    assert read_public(tpm.execute, item)[1] == bytes(pub.get_name())


@needs_swtpm
def test_import_of_an_ecc_key_with_short_coordinates_as_swtpm():
    """tpm2-pytss's from_pem drops leading zero bytes of x (1 key in 256 has one); libtpms
    loads such a key, and so must we (the binding check compares numbers, not bytes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    while True:
        key = ec.generate_private_key(ec.SECP256R1())
        if key.public_key().public_numbers().x < 1 << 248:
            break
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    sens = TPM2B_SENSITIVE.from_pem(pem)
    pub = TPM2B_PUBLIC.from_pem(pem, objectAttributes=TPMA_OBJECT.USERWITHAUTH
                                | TPMA_OBJECT.SIGN_ENCRYPT)
    assert pub.publicArea.unique.ecc.x.size < 32
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        for execute in (retrying(sw.execute), started().execute):
            parent, parent_pub = primary_public(execute(create_primary(RH_OWNER, template())))
            key_out, dup, seed = wrap(pytss_public(parent_pub).publicArea, pub, sens, None,
                                      AES128)
            r = execute(import_cmd(parent, key_out.marshal(), pub.marshal(), dup.marshal(),
                                   seed.marshal(), AES128.marshal()))
            assert rc(r) == 0, hex(rc(r))
            r = execute(load(parent, params(r), pub.marshal()))
            assert rc(r) == 0, hex(rc(r))
    finally:
        sw.close()


def test_import_errors():
    tpm = started()
    parent, parent_pub = primary_public(tpm.execute(create_primary(RH_OWNER, template())))
    signer = handle_of(tpm.execute(create_primary(RH_OWNER, template("rsa2048:rsassa"))))
    sens, pub = sealed_object()
    key, dup, seed = (x.marshal() for x in wrap(pytss_public(parent_pub).publicArea, pub,
                                                    sens, None, AES128))
    pub_b, sym = pub.marshal(), AES128.marshal()
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, dup, seed, sym))) == 0
    # the outer wrap covers the blob; the inner one needs the right key
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, flip(dup, 40), seed, sym))) == \
        P(INTEGRITY, 3)
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, flip(dup, 3), seed, sym))) == \
        P(INTEGRITY, 3)
    # the Name binds the blob to its public area
    other = sealed_object()[1].marshal()
    assert rc(tpm.execute(import_cmd(parent, key, other, dup, seed, sym))) == P(INTEGRITY, 3)
    # the encryption key must fit the algorithm, and be empty without one
    assert rc(tpm.execute(import_cmd(parent, b2(b"k" * 15), pub_b, dup, seed, sym))) == \
        P(SIZE, 1)
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, dup, seed, NO_SYM.marshal()))) == \
        P(SIZE, 1)
    # only a parent imports; fixedTPM / fixedParent objects cannot arrive
    assert rc(tpm.execute(import_cmd(signer, key, pub_b, dup, seed, sym))) == H(TYPE, 1)
    fixed = bytearray(pub_b)
    fixed[9] |= 0x02                                # fixedTPM
    assert rc(tpm.execute(import_cmd(parent, key, bytes(fixed), dup, seed, sym))) == \
        P(ATTRIBUTES, 2)
    # a broken seed
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, dup, flip(seed, 30), sym))) == \
        P(VALUE, 4)
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, dup, b2(seed[2:-1]), sym))) == \
        P(SIZE, 4)
    # the parent's authorization is checked (USER)
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, dup, seed, sym, auth=b"x"))) == 0x98E


def test_import_encrypted_duplication_needs_both_wraps():
    tpm = started()
    parent, parent_pub = primary_public(tpm.execute(create_primary(RH_OWNER, template())))
    attrs = SEALED | 0x800                           # encryptedDuplication
    sens, pub = sealed_object(attrs=attrs)
    parent_area = pytss_public(parent_pub).publicArea
    key, dup, seed = (x.marshal() for x in wrap(parent_area, pub, sens, None, AES128))
    pub_b = pub.marshal()
    assert rc(tpm.execute(import_cmd(parent, key, pub_b, dup, seed, AES128.marshal()))) == 0
    _, dup2, seed2 = (x.marshal() for x in wrap(parent_area, pub, sens))
    assert rc(tpm.execute(import_cmd(parent, b2(b""), pub_b, dup2, seed2,
                                     NO_SYM.marshal()))) == P(ATTRIBUTES, 1)


@pytest.mark.parametrize("parent_tmpl", ["rsa2048:aes128cfb", "aes128cfb"])
def test_import_without_outer_wrap(parent_tmpl):
    """inSymSeed empty: the duplicate is the (inner-wrapped) sensitive area itself, as
    TPM2_Duplicate makes it for TPM_RH_NULL. A symmetric parent takes only such blobs."""
    tpm = started()
    tmpl = template(parent_tmpl, objectAttributes=0x30072)     # a storage key
    parent, _ = primary_public(tpm.execute(create_primary(RH_OWNER, tmpl)))
    sens, pub = sealed_object(auth=b"")
    plain = sens.marshal()
    r = tpm.execute(import_cmd(parent, b2(b""), pub.marshal(), b2(plain), b2(b""),
                               NO_SYM.marshal()))
    assert rc(r) == 0
    item = handle_of(tpm.execute(load(parent, params(r), pub.marshal())))
    assert unseal(tpm.execute, item) == (0, b2(b"moved secret"))
    # a damaged size is caught when the sensitive area is unmarshaled
    assert rc(tpm.execute(import_cmd(parent, b2(b""), pub.marshal(), b2(plain + b"\0"),
                                     b2(b""), NO_SYM.marshal()))) == P(SIZE, 3)
    assert rc(tpm.execute(import_cmd(parent, b2(b""), pub.marshal(), b2(plain[:1]),
                                     b2(b""), NO_SYM.marshal()))) == P(0x09A, 3)  # INSUFFICIENT
    if parent_tmpl == "aes128cfb":
        assert rc(tpm.execute(import_cmd(parent, b2(b""), pub.marshal(), b2(plain),
                                         b2(b"seed"), NO_SYM.marshal()))) == H(TYPE, 1)


def _import_codes(execute):
    """Import / Load / Unseal outcomes for one TPM, its parents' keys being its own."""
    out = []
    for spec in ("rsa2048:aes128cfb", "ecc256:aes128cfb"):
        parent, parent_pub = primary_public(execute(create_primary(RH_OWNER, template(spec))))
        area = pytss_public(parent_pub).publicArea
        sens, pub = sealed_object()
        pub_b = pub.marshal()
        for sym in (None, AES128):
            key, dup, seed = (x.marshal() for x in wrap(area, pub, sens, None, sym))
            symb = (sym or NO_SYM).marshal()
            r = execute(import_cmd(parent, key, pub_b, dup, seed, symb))
            out.append(rc(r))
            if rc(r) == 0:
                item = handle_of(execute(load(parent, params(r), pub_b)))
                out.append(unseal(execute, item, b"obj-pw"))
                execute(flush(item))
            bad = [import_cmd(parent, key, pub_b, flip(dup, 4), seed, symb),
                   import_cmd(parent, key, pub_b, b2(dup[2:5]), seed, symb),
                   import_cmd(parent, key, pub_b, dup, b2(seed[2:-1]), symb),
                   import_cmd(parent, b2(b"x" * 3), pub_b, dup, seed, symb)]
            if sym is None:     # with an inner key, what "decrypts" would be random
                bad.append(import_cmd(parent, key, pub_b, dup, b2(b""), symb))
            out += [rc(execute(c)) for c in bad]
        fixed = bytearray(pub_b)
        fixed[9] |= 0x10                             # fixedParent
        out.append(rc(execute(import_cmd(parent, b2(b""), bytes(fixed), b2(b""), b2(b""),
                                         NO_SYM.marshal()))))
        encdup = sealed_object(attrs=SEALED | 0x800)[1].marshal()
        out.append(rc(execute(import_cmd(parent, b2(b""), encdup, b2(b""), b2(b""),
                                         NO_SYM.marshal()))))
        out.append(rc(execute(import_cmd(parent, b2(b"k" * 16), encdup, b2(b""), b2(b""),
                                         AES128.marshal()))))
        signer = handle_of(execute(create_primary(RH_OWNER, template("ecc256:ecdsa"))))
        out.append(rc(execute(import_cmd(signer, b2(b""), pub_b, b2(b""), b2(b""),
                                         NO_SYM.marshal()))))
        # intact blobs whose content does not fit the public area (ObjectLoad's checks
        # under a fixedTPM parent): binding, seed size, authValue size, type
        for damage in ("unique", "seed", "auth", "type"):
            s, p = sealed_object()
            if damage == "unique":
                p.publicArea.unique.keyedHash = b"\x55" * 32
            elif damage == "seed":
                s.sensitiveArea.seedValue = b"\x01" * 16
            elif damage == "auth":
                s.sensitiveArea.authValue = b"\x01" * 33
            else:
                p = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(
                    "aes128cfb", objectAttributes="userwithauth|decrypt|sign"))
            key, dup, seed = (x.marshal() for x in wrap(area, p, s, None, AES128))
            out.append(rc(execute(import_cmd(parent, key, p.marshal(), dup, seed,
                                             AES128.marshal()))))
        for h in (parent, signer):
            execute(flush(h))
    return out


@needs_swtpm
@pytest.mark.swtpm
def test_import_codes_as_swtpm():
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        ours, theirs = _import_codes(started().execute), _import_codes(retrying(sw.execute))
        assert ours == theirs
    finally:
        sw.close()


# -- Rewrap -------------------------------------------------------------------------------------

def test_rewrap_moves_the_outer_wrap():
    tpm = started()
    a, a_pub = primary_public(tpm.execute(create_primary(RH_OWNER, template())))
    b, b_pub = primary_public(tpm.execute(create_primary(RH_OWNER,
                                                         template("ecc384:aes256cfb"))))
    sens, pub = sealed_object()
    name = bytes(pub.get_name())
    key, dup, seed = (x.marshal() for x in wrap(pytss_public(a_pub).publicArea, pub, sens,
                                                    None, AES128))
    r = tpm.execute(rewrap_cmd(a, b, dup, name, seed))
    assert rc(r) == 0
    dup_b, seed_b = split_2b(params(r), 2)
    r = tpm.execute(import_cmd(b, key, pub.marshal(), dup_b, seed_b, AES128.marshal()))
    assert rc(r) == 0
    item = handle_of(tpm.execute(load(b, params(r), pub.marshal())))
    assert unseal(tpm.execute, item, b"obj-pw") == (0, b2(b"moved secret"))
    # to TPM_RH_NULL: only the inner wrap is left, which Import takes without a seed
    r = tpm.execute(rewrap_cmd(a, RH_NULL, dup, name, seed))
    assert rc(r) == 0
    inner, no_seed = split_2b(params(r), 2)
    assert no_seed == b2(b"")
    r = tpm.execute(import_cmd(a, key, pub.marshal(), inner, b2(b""), AES128.marshal()))
    assert rc(r) == 0
    # and from TPM_RH_NULL to a parent again
    r = tpm.execute(rewrap_cmd(RH_NULL, a, inner, name, b2(b"")))
    assert rc(r) == 0
    dup_a, seed_a = split_2b(params(r), 2)
    assert rc(tpm.execute(import_cmd(a, key, pub.marshal(), dup_a, seed_a,
                                     AES128.marshal()))) == 0
    # errors: seed and old parent must agree, the blob and Name are checked
    assert rc(tpm.execute(rewrap_cmd(a, b, dup, name, b2(b"")))) == H(HANDLE, 1)
    assert rc(tpm.execute(rewrap_cmd(RH_NULL, b, dup, name, seed))) == H(HANDLE, 1)
    assert rc(tpm.execute(rewrap_cmd(a, b, flip(dup, 50), name, seed))) == P(INTEGRITY, 1)
    assert rc(tpm.execute(rewrap_cmd(a, b, dup, flip(name, 5), seed))) == P(INTEGRITY, 1)
    assert rc(tpm.execute(rewrap_cmd(a, b, dup, name, flip(seed, 9)))) == P(VALUE, 3)
    signer = handle_of(tpm.execute(create_primary(RH_OWNER, template("rsa2048:rsassa"))))
    assert rc(tpm.execute(rewrap_cmd(signer, b, dup, name, seed))) == H(TYPE, 1)
    assert rc(tpm.execute(rewrap_cmd(a, signer, dup, name, seed))) == H(TYPE, 2)


def _rewrap_codes(execute):
    a, a_pub = primary_public(execute(create_primary(RH_OWNER, template())))
    b = handle_of(execute(create_primary(RH_OWNER, template("ecc256:aes128cfb"))))
    signer = handle_of(execute(create_primary(RH_OWNER, template("ecc256:ecdsa"))))
    sens, pub = sealed_object()
    name = bytes(pub.get_name())
    key, dup, seed = (x.marshal() for x in wrap(pytss_public(a_pub).publicArea, pub, sens,
                                                    None, AES128))
    out = []
    r = execute(rewrap_cmd(a, RH_NULL, dup, name, seed))
    out.append((rc(r), len(params(r))))             # the inner blob, and no seed
    for c in (rewrap_cmd(a, b, dup, name, seed),
              rewrap_cmd(a, b, dup, name, b2(b"")),
              rewrap_cmd(RH_NULL, b, dup, name, seed),
              rewrap_cmd(a, b, flip(dup, 50), name, seed),
              rewrap_cmd(a, b, b2(dup[2:6]), name, seed),
              rewrap_cmd(a, b, dup, flip(name, 5), seed),
              rewrap_cmd(a, b, dup, name, flip(seed, 9)),
              rewrap_cmd(a, b, dup, name, b2(seed[2:-1])),
              rewrap_cmd(signer, b, dup, name, seed),
              rewrap_cmd(a, signer, dup, name, seed),
              rewrap_cmd(RH_NULL, RH_NULL, b2(b"anything"), b"", b2(b""))):
        out.append(rc(execute(c)))
    return out


@needs_swtpm
@pytest.mark.swtpm
def test_rewrap_codes_as_swtpm():
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        assert _rewrap_codes(started().execute) == _rewrap_codes(retrying(sw.execute))
    finally:
        sw.close()


# -- Duplicate ----------------------------------------------------------------------------------

def _movable_storage_key(tpm, parent):
    """A restricted decryption key that may be duplicated (neither fixedTPM nor fixedParent),
    with its sensitive area read back through Duplicate(TPM_RH_NULL):
    (handle, public, sensitive)."""
    tmpl = template(objectAttributes=0x30060)   # sensitiveDataOrigin|userWithAuth|restr.|decrypt
    private, public = split_create(tpm.execute(create(parent, tmpl)))
    handle = handle_of(tpm.execute(load(parent, private, public)))
    _, plain, _ = duplication.duplicate(tpm, None, handle, RH_NULL, b"", _sym(NO_SYM))
    return handle, public, TPM2B_SENSITIVE.unmarshal(plain)[0]


def _sym(pytss_sym):
    from ctpm.wire.structures import TPMT_SYM_DEF_OBJECT as S
    return S.parse(pytss_sym.marshal())


@pytest.mark.parametrize("inner", [False, True], ids=["outer-only", "inner-and-outer"])
def test_duplicate_handler_output_unwraps_with_pytss(inner):
    """TPM2_Duplicate's semantics, driven directly (the DUP role with a policy session is
    in test_policy.py and test_tools_duplication.py): the blob opens with tpm2-pytss' unwrap and imports
    back under the new parent."""
    tpm = started()
    root, _ = primary_public(tpm.execute(create_primary(RH_OWNER, template())))
    new_parent, new_pub, new_sens = _movable_storage_key(tpm, root)
    sealed = template("keyedhash", objectAttributes=SEALED)
    private, public = split_create(tpm.execute(create(root, sealed,
                                                      sensitive_create(b"pw", b"duplicated"))))
    obj = handle_of(tpm.execute(load(root, private, public)))
    sym = AES128 if inner else NO_SYM
    key, dup, seed = duplication.duplicate(tpm, None, obj, new_parent, b"", _sym(sym))
    assert bool(key) == inner and len(key) in (0, 16)
    sens = unwrap(pytss_public(new_pub).publicArea, new_sens.sensitiveArea,
                  pytss_public(public), TPM2B_PRIVATE(dup), TPM2B_ENCRYPTED_SECRET(seed),
                  key or None, sym if inner else None)
    assert bytes(sens.sensitiveArea.sensitive.bits) == b"duplicated"
    r = tpm.execute(import_cmd(new_parent, b2(key), public, b2(dup), b2(seed), sym.marshal()))
    assert rc(r) == 0, hex(rc(r))
    item = handle_of(tpm.execute(load(new_parent, params(r), public)))
    assert unseal(tpm.execute, item, b"pw") == (0, b2(b"duplicated"))
    # a caller-chosen inner key is used and not returned
    if inner:
        key, dup, seed = duplication.duplicate(tpm, None, obj, new_parent, b"K" * 16, _sym(sym))
        assert key == b""
        r = tpm.execute(import_cmd(new_parent, b2(b"K" * 16), public, b2(dup), b2(seed),
                                   sym.marshal()))
        assert rc(r) == 0


def test_duplicate_handler_errors():
    from ctpm.errors import TpmError

    tpm = started()
    root, _ = primary_public(tpm.execute(create_primary(RH_OWNER, template())))
    movable, _, _ = _movable_storage_key(tpm, root)
    signer = handle_of(tpm.execute(create_primary(RH_OWNER, template("rsa2048:rsassa"))))

    def code(*args):
        try:
            duplication.duplicate(tpm, None, *args)
        except TpmError as e:
            return e.code
        return 0

    assert code(root, RH_NULL, b"", _sym(NO_SYM)) == H(ATTRIBUTES, 1)        # fixedParent
    assert code(movable, signer, b"", _sym(NO_SYM)) == H(TYPE, 2)
    assert code(movable, RH_NULL, b"k", _sym(NO_SYM)) == P(SIZE, 1)
    assert code(movable, RH_NULL, b"k" * 15, _sym(AES128)) == P(SIZE, 1)
    assert code(movable, root, b"", _sym(AES128)) == 0
    # encryptedDuplication: an inner wrap and a new parent are required
    tmpl = template(objectAttributes=0x30860)
    private, public = split_create(tpm.execute(create(root, tmpl)))
    enc = handle_of(tpm.execute(load(root, private, public)))
    assert code(enc, root, b"", _sym(NO_SYM)) == P(SYMMETRIC, 2)
    assert code(enc, RH_NULL, b"", _sym(AES128)) == H(HIERARCHY, 2)
    assert code(enc, root, b"", _sym(AES128)) == 0


def test_duplicate_needs_a_policy_session():
    """DUP role: a password (or HMAC session) cannot authorize it (Part 1 §19.7.3)."""
    tpm = started()
    root, _ = primary_public(tpm.execute(create_primary(RH_OWNER, template())))
    movable, _, _ = _movable_storage_key(tpm, root)
    r = tpm.execute(cmd(0x14B, b2(b"") + NO_SYM.marshal(), handles=[movable, RH_NULL],
                        sessions=PW))
    assert rc(r) in (AUTH_TYPE, AUTH_UNAVAILABLE)


@needs_swtpm
@pytest.mark.swtpm
def test_duplicate_with_a_password_as_swtpm():
    """The DUP role needs a policy session: a password gets TPM_RC_AUTH_TYPE."""
    def codes(execute):
        root = handle_of(execute(create_primary(RH_OWNER, template())))
        tmpl = template(objectAttributes=0x30060)
        private, public = split_create(execute(create(root, tmpl)))
        movable = handle_of(execute(load(root, private, public)))
        body = b2(b"") + NO_SYM.marshal()
        return [rc(execute(cmd(0x14B, body, handles=[h, RH_NULL], sessions=PW)))
                for h in (movable, root)] + \
               [rc(execute(cmd(0x14B, body, handles=[movable, RH_NULL])))]
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        assert codes(started().execute) == codes(retrying(sw.execute))
    finally:
        sw.close()


# -- ECC_Parameters -----------------------------------------------------------------------------

def test_ecc_parameters_are_the_nist_curves():
    from cryptography.hazmat.primitives.asymmetric import ec
    from tpm2_pytss.types import TPMS_ALGORITHM_DETAIL_ECC

    tpm = started()
    for curve, cls in ((TPM2_ECC.NIST_P256, ec.SECP256R1), (TPM2_ECC.NIST_P384, ec.SECP384R1),
                       (TPM2_ECC.NIST_P521, ec.SECP521R1)):
        r = tpm.execute(cmd(0x178, u16(curve)))
        assert rc(r) == 0
        d, _ = TPMS_ALGORITHM_DETAIL_ECC.unmarshal(params(r))
        assert d.curveID == curve and d.keySize == cls.key_size
        # G is on y^2 = x^3 + ax + b (mod p), and [n]G is the identity: n is the order
        p, a, b = (int.from_bytes(bytes(v), "big") for v in (d.p, d.a, d.b))
        gx, gy = int.from_bytes(bytes(d.gX), "big"), int.from_bytes(bytes(d.gY), "big")
        assert (gy * gy - gx ** 3 - a * gx - b) % p == 0
        g = ec.derive_private_key(1, cls()).public_key().public_numbers()
        assert (g.x, g.y) == (gx, gy)
        n = int.from_bytes(bytes(d.n), "big")
        with pytest.raises(ValueError):
            ec.derive_private_key(n, cls())
        ec.derive_private_key(n - 1, cls())
        assert bytes(d.h) == b"\x01"
    assert rc(tpm.execute(cmd(0x178, u16(0x0011)))) == 0x1E6      # BN P-638: CURVE, P1


@needs_swtpm
@pytest.mark.swtpm
def test_ecc_parameters_as_swtpm():
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        ours = started()
        for curve in (TPM2_ECC.NIST_P256, TPM2_ECC.NIST_P384, TPM2_ECC.NIST_P521, 0x0000):
            c = cmd(0x178, u16(curve))
            assert ours.execute(c) == sw.execute(c), hex(curve)
    finally:
        sw.close()
