"""Objects: CreatePrimary / Create / Load / ReadPublic / Unseal / FlushContext, in memory and
against swtpm. Templates are marshaled by tpm2-pytss, so the wire format is the client's."""
import struct

import pytest

from ctpm.engine.config import EngineConfig
from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state.store import DirStore
from tests.peers import Swtpm, needs_swtpm
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, pw_session, rc, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_PUBLIC  # noqa: E402

RH_OWNER, RH_ENDORSEMENT, RH_PLATFORM, RH_NULL = 0x40000001, 0x4000000B, 0x4000000C, 0x40000007
EMPTY_PCRS = u32(0)


SIGNING = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"
STORAGE = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"
SIGNING_SPECS = {"rsa2048:rsassa", "ecc256:ecdsa", "hmac", "ecc256:ecdsa-sha256"}


def template(spec="rsa2048:aes128cfb", objectAttributes=None, authPolicy=None):
    """A TPM2B_PUBLIC from tpm2-pytss, with attributes it would refuse patched in."""
    if spec in SIGNING_SPECS:
        pub = TPMT_PUBLIC.parse(spec, objectAttributes=SIGNING)
    elif ":aes" in spec:
        pub = TPMT_PUBLIC.parse(spec, objectAttributes=STORAGE)
    else:
        pub = TPMT_PUBLIC.parse(spec)
    if authPolicy is not None:
        pub.authPolicy = authPolicy
    raw = bytearray(TPM2B_PUBLIC(publicArea=pub).marshal())
    if objectAttributes is not None:
        raw[6:10] = struct.pack(">I", objectAttributes)
    return bytes(raw)


def sensitive_create(auth=b"", data=b""):
    body = b2(auth) + b2(data)
    return b2(body)


def create_primary(hierarchy=RH_OWNER, tmpl=None, sens=None, auth=b""):
    tmpl = template() if tmpl is None else tmpl
    body = (sens or sensitive_create()) + tmpl + b2(b"") + EMPTY_PCRS
    return cmd(0x131, body, handles=[hierarchy], sessions=[pw_session(auth)])


def primary_public(rsp):
    """(handle, outPublic bytes) of a CreatePrimary response."""
    handle = struct.unpack(">I", rsp[10:14])[0]
    body = rsp[18:]
    n = struct.unpack(">H", body[:2])[0]
    return handle, body[:2 + n]


def create(parent, tmpl, sens=None):
    body = (sens or sensitive_create()) + tmpl + b2(b"") + EMPTY_PCRS
    return cmd(0x153, body, handles=[parent], sessions=[pw_session()])


def split_create(rsp):
    body = params(rsp)
    n = struct.unpack(">H", body[:2])[0]
    private = body[:2 + n]
    m = struct.unpack(">H", body[2 + n:4 + n])[0]
    return private, body[2 + n:4 + n + m]


def load(parent, private, public):
    return cmd(0x157, private + public, handles=[parent], sessions=[pw_session()])


def flush(handle):
    return cmd(0x165, u32(handle))


def started(seed=b"objects", **config):
    tpm = Tpm.manufacture(seed=seed, config=EngineConfig(**config))
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    return tpm


@pytest.mark.parametrize("spec", ["rsa2048:aes128cfb", "rsa3072:aes256cfb", "ecc256:aes128cfb",
                                  "ecc384:aes256cfb", "ecc521:aes128cfb", "rsa2048:rsassa",
                                  "ecc256:ecdsa", "keyedhash", "hmac", "aes128cfb"])
@pytest.mark.parametrize("hierarchy", [RH_OWNER, RH_ENDORSEMENT, RH_PLATFORM])
def test_primary_keys_are_deterministic(spec, hierarchy):
    a, b = started(), started()
    pa = primary_public(a.execute(create_primary(hierarchy, template(spec))))[1]
    pb = primary_public(b.execute(create_primary(hierarchy, template(spec))))[1]
    assert pa == pb
    again = primary_public(a.execute(create_primary(hierarchy, template(spec))))[1]
    assert again == pa
    other = started(seed=b"another seed")
    assert primary_public(other.execute(create_primary(hierarchy, template(spec))))[1] != pa


def test_primary_keys_differ_per_hierarchy_and_null_changes_at_reset():
    tpm = started()
    keys = {h: primary_public(tpm.execute(create_primary(h)))[1]
            for h in (RH_OWNER, RH_ENDORSEMENT, RH_PLATFORM, RH_NULL)}
    assert len(set(keys.values())) == 4
    for h in list(tpm.state.objects):
        tpm.execute(flush(h))
    tpm.power_off()
    tpm.power_on()
    tpm.execute(STARTUP_CLEAR)
    assert primary_public(tpm.execute(create_primary(RH_OWNER)))[1] == keys[RH_OWNER]
    assert primary_public(tpm.execute(create_primary(RH_NULL)))[1] != keys[RH_NULL]


def test_primary_survives_a_daemon_restart_with_state(tmp_path):
    first = Tpm.manufacture(Platform(DirStore(tmp_path)))
    first.execute(STARTUP_CLEAR)
    pub = primary_public(first.execute(create_primary(RH_ENDORSEMENT)))[1]
    first.save_state()
    second = Tpm.manufacture(Platform(DirStore(tmp_path)))
    second.execute(STARTUP_CLEAR)
    assert primary_public(second.execute(create_primary(RH_ENDORSEMENT)))[1] == pub
    fresh = Tpm.manufacture()
    fresh.execute(STARTUP_CLEAR)
    assert primary_public(fresh.execute(create_primary(RH_ENDORSEMENT)))[1] != pub


def test_create_load_unseal_and_tamper():
    tpm = started()
    parent, _ = primary_public(tpm.execute(create_primary()))
    sealed_tmpl = template("keyedhash", objectAttributes=0x52)   # fixedTPM|fixedParent|userWithAuth
    r = tpm.execute(create(parent, sealed_tmpl, sensitive_create(b"pw", b"the secret")))
    assert rc(r) == 0
    private, public = split_create(r)
    r = tpm.execute(load(parent, private, public))
    assert rc(r) == 0
    item = struct.unpack(">I", r[10:14])[0]
    r = tpm.execute(cmd(0x15E, handles=[item], sessions=[pw_session(b"pw")]))
    assert rc(r) == 0 and params(r) == b2(b"the secret")
    assert rc(tpm.execute(cmd(0x15E, handles=[item], sessions=[pw_session(b"no")]))) == 0x98E
    # every byte of the private blob is covered: flip one in the encrypted part
    bad = bytearray(private)
    bad[-1] ^= 1
    assert rc(tpm.execute(load(parent, bytes(bad), public))) == 0x1DF      # INTEGRITY, parameter 1
    # under another parent the blob does not open
    other, _ = primary_public(tpm.execute(create_primary(tmpl=template("ecc256:aes128cfb"))))
    assert rc(tpm.execute(load(other, private, public))) == 0x1DF
    # ReadPublic gives back the public area the name is computed over
    r = tpm.execute(cmd(0x173, handles=[item]))
    assert rc(r) == 0 and params(r).startswith(public)


def test_object_memory_is_64_and_configurable():
    tpm = started(max_objects=5)
    handles = [primary_public(tpm.execute(create_primary(tmpl=template("hmac"))))[0]
               for _ in range(5)]
    assert handles == [0x80000000 + i for i in range(5)]
    assert rc(tpm.execute(create_primary(tmpl=template("hmac")))) == 0x902   # OBJECT_MEMORY
    assert rc(tpm.execute(flush(handles[2]))) == 0
    assert primary_public(tpm.execute(create_primary(tmpl=template("hmac"))))[0] == handles[2]
    big = started()
    codes = [rc(big.execute(create_primary(tmpl=template("hmac")))) for _ in range(65)]
    assert codes[:64] == [0] * 64 and codes[64] == 0x902


BAD_TEMPLATES = {
    "fixedtpm-without-fixedparent": template(objectAttributes=0x30062),
    "sign-and-decrypt-restricted": template(objectAttributes=0x70072),
    "storage-key-without-symmetric": template("rsa2048", objectAttributes=0x30072),
    "unrestricted-with-symmetric": template("rsa2048:aes128cfb", objectAttributes=0x20072),
    "asymmetric-without-sensitivedataorigin": template(objectAttributes=0x30052),
    "sealed-with-sensitivedataorigin": template("keyedhash", objectAttributes=0x72),
    "authpolicy-wrong-size": template(authPolicy=b"\x01" * 20),
    "restricted-signing-null-scheme": template("rsa2048", objectAttributes=0x50072),
    "ecc-kdf": None,
}


def _ecc_with_kdf():
    from tpm2_pytss.constants import TPM2_ALG
    pub = TPMT_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=SIGNING)
    pub.parameters.eccDetail.kdf.scheme = TPM2_ALG.MGF1
    pub.parameters.eccDetail.kdf.details.mgf1.hashAlg = TPM2_ALG.SHA256
    return TPM2B_PUBLIC(publicArea=pub).marshal()


BAD_TEMPLATES["ecc-kdf"] = _ecc_with_kdf()


@needs_swtpm
@pytest.mark.swtpm
def test_template_errors_as_swtpm():
    ours = started()
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        mismatches = []
        for name, tmpl in BAD_TEMPLATES.items():
            a = ours.execute(create_primary(tmpl=tmpl))
            b = sw.execute(create_primary(tmpl=tmpl))
            for r, execute in ((a, ours.execute), (b, sw.execute)):
                if rc(r) == 0:
                    execute(flush(struct.unpack(">I", r[10:14])[0]))
            if rc(a) != rc(b):
                mismatches.append(f"{name}: ctpm {rc(a):#x} swtpm {rc(b):#x}")
        assert not mismatches, "\n".join(mismatches)
    finally:
        sw.close()


def evict(auth, obj, persistent):
    return cmd(0x120, u32(persistent), handles=[auth, obj], sessions=[pw_session()])


def test_evict_control_persists_across_restarts(tmp_path):
    tpm = Tpm.manufacture(Platform(DirStore(tmp_path)), seed=b"evict")
    tpm.execute(STARTUP_CLEAR)
    parent, pub = primary_public(tpm.execute(create_primary()))
    assert rc(tpm.execute(evict(RH_OWNER, parent, 0x81000001))) == 0
    assert rc(tpm.execute(evict(RH_OWNER, parent, 0x81000001))) == 0x14C       # NV_DEFINED
    r = tpm.execute(cmd(0x17A, u32(1) + u32(0x81000000) + u32(10)))
    assert params(r)[5:13] == u32(1) + u32(0x81000001)
    # a child created under the persistent handle loads under the transient copy too
    sealed = template("keyedhash", objectAttributes=0x52)
    private, public = split_create(tpm.execute(create(0x81000001, sealed,
                                                      sensitive_create(b"", b"kept"))))
    assert rc(tpm.execute(load(parent, private, public))) == 0
    tpm.save_state()
    again = Tpm.manufacture(Platform(DirStore(tmp_path)))
    again.execute(STARTUP_CLEAR)
    r = again.execute(cmd(0x173, handles=[0x81000001]))
    assert rc(r) == 0 and params(r).startswith(pub)
    r = again.execute(load(0x81000001, private, public))
    assert rc(r) == 0
    item = struct.unpack(">I", r[10:14])[0]
    assert params(again.execute(cmd(0x15E, handles=[item], sessions=[pw_session()]))) == b2(b"kept")
    assert rc(again.execute(evict(RH_OWNER, 0x81000001, 0x81000001))) == 0
    assert rc(again.execute(cmd(0x173, handles=[0x81000001]))) == 0x18B        # HANDLE, H1


@needs_swtpm
@pytest.mark.swtpm
def test_evict_control_errors_as_swtpm():
    ours = started()
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        handles = []
        for t in (ours, sw):
            owner = primary_public(t.execute(create_primary()))[0]
            null = primary_public(t.execute(create_primary(RH_NULL)))[0]
            handles.append((owner, null))
        assert handles[0] == handles[1]
        owner, null = handles[0]
        steps = [evict(RH_OWNER, owner, 0x81800000),        # platform range with owner auth
                 evict(RH_PLATFORM, owner, 0x81800000),     # owner object, platform auth
                 evict(RH_OWNER, null, 0x81000010),         # temporary object
                 evict(RH_OWNER, owner, 0x80000000),        # not a persistent handle
                 evict(0x4000000B, owner, 0x81000010),      # endorsement cannot provision
                 evict(RH_OWNER, owner, 0x81000010),
                 evict(RH_OWNER, owner, 0x81000010),        # already there
                 evict(RH_OWNER, 0x81000010, 0x81000011),   # persistent, other handle
                 evict(RH_OWNER, 0x81000010, 0x81000010),   # removed
                 cmd(0x173, handles=[0x81000010])]
        codes = [(rc(ours.execute(c)), rc(sw.execute(c))) for c in steps]
        assert [a for a, _ in codes] == [b for _, b in codes], codes
    finally:
        sw.close()


def test_object_change_auth():
    tpm = started()
    parent, _ = primary_public(tpm.execute(create_primary()))
    other, _ = primary_public(tpm.execute(create_primary(tmpl=template("ecc256:aes128cfb"))))
    sealed = template("keyedhash", objectAttributes=0x52)
    private, public = split_create(tpm.execute(create(parent, sealed,
                                                      sensitive_create(b"old", b"data"))))
    item = struct.unpack(">I", tpm.execute(load(parent, private, public))[10:14])[0]
    change = cmd(0x150, b2(b"new"), handles=[item, parent], sessions=[pw_session(b"old")])
    r = tpm.execute(change)
    assert rc(r) == 0
    new_private = params(r)
    # the wrong parent, or the wrong old password, is refused
    assert rc(tpm.execute(cmd(0x150, b2(b"x"), handles=[item, other],
                              sessions=[pw_session(b"old")]))) == 0x28A   # TYPE, handle 2
    assert rc(tpm.execute(cmd(0x150, b2(b"x"), handles=[item, parent],
                              sessions=[pw_session(b"bad")]))) == 0x98E   # AUTH_FAIL, S1
    new_item = struct.unpack(">I", tpm.execute(load(parent, new_private, public))[10:14])[0]
    assert params(tpm.execute(cmd(0x15E, handles=[new_item],
                                  sessions=[pw_session(b"new")]))) == b2(b"data")
    assert rc(tpm.execute(cmd(0x15E, handles=[new_item],
                              sessions=[pw_session(b"old")]))) == 0x98E


def handle_params(rsp):
    """Parameters of a response with a handle and sessions (after parameterSize)."""
    size = struct.unpack(">I", rsp[14:18])[0]
    return rsp[18:18 + size]


def create_loaded(parent, tmpl_public_bytes, sens=None):
    body = (sens or sensitive_create()) + b2(tmpl_public_bytes)
    return cmd(0x191, body, handles=[parent], sessions=[pw_session()])


def _tmpl(spec, attrs, label=b"", context=b""):
    """A TPMT_PUBLIC (no size prefix); for ECC, x and y carry a TPMS_DERIVE's label/context."""
    from tpm2_pytss.types import TPM2B_ECC_PARAMETER
    pub = TPMT_PUBLIC.parse(spec, objectAttributes=attrs)
    if label or context:
        pub.unique.ecc.x = TPM2B_ECC_PARAMETER(label)
        pub.unique.ecc.y = TPM2B_ECC_PARAMETER(context)
    return pub.marshal()


def test_create_loaded_primary_ordinary_and_derived():
    tpm = started()
    storage = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"
    # under a hierarchy: the same key as CreatePrimary
    r = tpm.execute(create_loaded(RH_OWNER, _tmpl("rsa2048:aes128cfb", storage)))
    assert rc(r) == 0
    body = handle_params(r)
    assert body[:2] == b"\0\0"                                   # no private for a primary
    primary_pub = primary_public(tpm.execute(create_primary()))[1]
    assert body[2:2 + len(primary_pub)] == primary_pub
    parent = struct.unpack(">I", r[10:14])[0]
    # under a storage parent: loaded, and the private blob loads again
    r = tpm.execute(create_loaded(parent, _tmpl("ecc256:ecdsa-sha256", SIGNING)))
    assert rc(r) == 0
    body = handle_params(r)
    n = struct.unpack(">H", body[:2])[0]
    private = body[:2 + n]
    m = struct.unpack(">H", body[2 + n:4 + n])[0]
    public = body[2 + n:4 + n + m]
    assert n > 0 and rc(tpm.execute(load(parent, private, public))) == 0
    # a derivation parent: restricted decrypt keyed hash with the XOR/KDF1_SP800_108 scheme
    derive = TPMT_PUBLIC.parse("xor:sha256", objectAttributes=storage)
    derive.parameters.keyedHashDetail.scheme.details.exclusiveOr.kdf = 0x22
    r = tpm.execute(create_loaded(parent, derive.marshal()))
    assert rc(r) == 0, hex(rc(r))
    dparent = struct.unpack(">I", r[10:14])[0]
    derived = "fixedtpm|fixedparent|userwithauth|sign"
    keys = []
    for label in (b"label-a", b"label-a", b"label-b"):
        r = tpm.execute(create_loaded(dparent, _tmpl("ecc256:ecdsa-sha256", derived, label,
                                                     b"ctx")))
        assert rc(r) == 0, hex(rc(r))
        keys.append(handle_params(r)[2:])
        tpm.execute(flush(struct.unpack(">I", r[10:14])[0]))
    assert keys[0] == keys[1] != keys[2]
    # derived RSA keys and derived keys with sensitiveDataOrigin are refused
    rsa = _tmpl("rsa2048:rsassa", derived) + b"\0\0"            # unique: an empty TPMS_DERIVE
    assert rc(tpm.execute(create_loaded(dparent, rsa))) == 0x2CA             # TYPE, P2
    assert rc(tpm.execute(create_loaded(
        dparent, _tmpl("ecc256:ecdsa-sha256", derived + "|sensitivedataorigin", b"l")))) == 0x082


def _policy_secret_endorsement(hash_name):
    """PolicySecret(TPM_RH_ENDORSEMENT) from a zero digest (Part 3 §23.4), in `hash_name`."""
    import hashlib
    size = hashlib.new(hash_name).digest_size
    d = hashlib.new(hash_name, b"\0" * size + u32(0x151) + u32(RH_ENDORSEMENT)).digest()
    return hashlib.new(hash_name, d).digest()


HIGH_RANGE = {   # TCG EK Credential Profile high-range templates: shape (alg, size, nameAlg)
    "H-1 RSA-2048": ("rsa2048:aes128cfb", 256, "sha256"),
    "H-2 ECC P-256": ("ecc256:aes128cfb", 32, "sha256"),
    "H-3 ECC P-384": ("ecc384:aes256cfb", 48, "sha384"),
    "H-4 ECC P-521": ("ecc521:aes256cfb", 66, "sha512"),
    "H-6 RSA-3072": ("rsa3072:aes256cfb", 384, "sha384"),
    "H-7 RSA-4096": ("rsa4096:aes256cfb", 512, "sha384"),
}


@pytest.mark.parametrize("name", sorted(HIGH_RANGE))
def test_high_range_ek_template_shapes(name):
    """userWithAuth and adminWithPolicy set, unique zero-filled to the key size, an authPolicy
    in the template's nameAlg (here Policy A, PolicySecret(TPM_RH_ENDORSEMENT), alone)."""
    from tpm2_pytss.types import TPM2B_DIGEST
    spec, size, hash_name = HIGH_RANGE[name]
    attrs = STORAGE + "|adminwithpolicy"
    pub = TPMT_PUBLIC.parse(f"{spec}", objectAttributes=attrs, nameAlg=hash_name)
    pub.authPolicy = TPM2B_DIGEST(_policy_secret_endorsement(hash_name))
    if spec.startswith("rsa"):
        pub.unique.rsa = b"\0" * size
    else:
        pub.unique.ecc.x = b"\0" * size
        pub.unique.ecc.y = b"\0" * size
    tmpl = TPM2B_PUBLIC(publicArea=pub).marshal()
    a, b = started(), started()
    ra, rb = (t.execute(create_primary(RH_ENDORSEMENT, tmpl)) for t in (a, b))
    assert rc(ra) == 0, hex(rc(ra))
    out = primary_public(ra)[1]
    assert out == primary_public(rb)[1]
    parsed, _ = TPM2B_PUBLIC.unmarshal(out)
    assert bytes(parsed.publicArea.authPolicy) == _policy_secret_endorsement(hash_name)
    assert parsed.publicArea.objectAttributes & 0xC0 == 0xC0      # userWithAuth|adminWithPolicy
