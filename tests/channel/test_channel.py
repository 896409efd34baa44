"""The TEE<->TPM trusted channel end to end: a real `ctpm run --mode ephemeral` TPM (simulated
AMD-SP), a real `ctpm verifier serve` with an authority key, `ctpm secret seal/get` and the
library - and a hostile relay in the host path that records and rewrites the TPM's traffic.
Every attack of docs/channel.md's threat model is refused, and the secret never crosses the
relay in clear."""
import json
import os
import struct
import subprocess
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ctpm.attest import evidence as E
from ctpm.attest.tpm import parse_selection
from ctpm.channel import protocol as P
from ctpm.channel.authority import Authority, AuthorityError, SecretStore, load_key
from ctpm.channel.client import VerifierClient, check_tpm_token, get_secret
from ctpm.channel.secrets import create_primary, seal
from ctpm.channel.tee import TeeKey, tee_evidence
from ctpm.channel.tpm import ChannelError, TpmChannel, TpmError, b2, take_b2, u16, u32
from ctpm.channel.transport import TctiTransport
from ctpm.snp.simulator import SimulatedProvider, SimulatedSP
from ctpm.testing.process import command, environment, run_daemon
from tests.attest.service_helpers import AUDIENCE, make_key, run_service, write_policy
from tests.channel.relay import Relay, command_code

PCRS = "sha256:0,1,2,3,4,5,6,7"
CC_START_AUTH, CC_UNSEAL, CC_POLICY_SIGNED = 0x176, 0x15E, 0x160


@dataclass
class Env:
    dir: str
    sim: SimulatedSP
    tpm: object             # the ctpm daemon
    svc: object             # the verifier service
    policy: str
    key: str
    authority_key: str
    secrets: str
    authority_public: bytes

    def provider(self, **fields):
        return SimulatedProvider(self.sim, **fields)

    def seal(self, name, data, pcrs="sha256:0,7", nv_index=None, **extra):
        t = TctiTransport(self.tpm.tcti())
        try:
            record = seal(TpmChannel(t), name, data, parse_selection(pcrs),
                          self.authority_public, nv_index=nv_index)
        finally:
            t.close()
        record.update(extra)
        with open(os.path.join(self.secrets, name + ".json"), "w") as f:
            json.dump(record, f)
        return record

    def get(self, name, tcti=None, timings=None, **kw):
        t = TctiTransport(tcti or self.tpm.tcti())
        try:
            return get_secret(t, name, self.svc.url, audience=AUDIENCE,
                              provider=kw.pop("provider", None) or self.provider(),
                              pcrs=PCRS, timings=timings, **kw)
        finally:
            t.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("channel"))
    sim = SimulatedSP(os.path.join(d, "sp"), "milan")
    policy = write_policy(d, sim, pcrs=PCRS)
    key = make_key(d)
    akey = os.path.join(d, "authority.pem")
    subprocess.run(command("verifier", "keygen", akey), check=True, env=environment(),
                   capture_output=True)
    secrets = os.path.join(d, "secrets")
    os.mkdir(secrets)
    with open(os.path.join(d, "admin.token"), "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    with run_daemon("--mode", "ephemeral", "--snp-provider", "simulated", "--snp-sim-dir",
                    sim.directory, timeout=30) as tpm, \
            run_service(policy, key, "--authority-key", akey, "--secrets", secrets,
                        "--allow-tee-provisioning", "--admin-token-file",
                        os.path.join(d, "admin.token")) as svc:
        t = TctiTransport(tpm.tcti())
        TpmChannel(t).call("Startup", u16(0))
        t.close()
        public = bytes.fromhex(VerifierClient(svc.url).authority()["public"])
        yield Env(d, sim, tpm, svc, policy, key, akey, secrets, public)
        log = svc.log()
        if "Traceback" in log:
            with open("/tmp/lead-svc.log", "w") as f:
                f.write(log)
        assert "Traceback" not in log


def ctpm(*args):
    return subprocess.run(command(*args), capture_output=True, env=environment())


# --- it works, through the real clients --------------------------------------------------------

def test_seal_and_get_on_the_command_line(env, tmp_path):
    (tmp_path / "s.bin").write_bytes(b"the disk key \x00\x01\x02")
    (tmp_path / "wrong.token").write_text("w" * 64)
    seal_args = ("secret", "seal", "--tcti", env.tpm.tcti(), "--name", "cli-disk", "--in",
                 str(tmp_path / "s.bin"), "--authority", env.svc.url, "-o",
                 str(tmp_path / "cli-disk.json"))
    r = ctpm(*seal_args, "--register", str(tmp_path / "wrong.token"))
    assert r.returncode == 1 and b"not registered: tee_token" in r.stderr, r.stderr
    # the operator's token registers the record with the verifier (POST /secrets)
    r = ctpm(*seal_args, "--register", os.path.join(env.dir, "admin.token"))
    assert r.returncode == 0 and b"registered" in r.stdout, r.stderr
    assert os.path.exists(os.path.join(env.secrets, "cli-disk.json"))
    r = ctpm(*seal_args, "--register", os.path.join(env.dir, "admin.token"))
    assert r.returncode == 1 and b"secret_exists" in r.stderr         # never overwritten
    out = tmp_path / "got.bin"
    # the command line: the audience is the one the verifier names
    r = ctpm("secret", "get", "--tcti", env.tpm.tcti(), "--name", "cli-disk", "--verifier",
             env.svc.url, "-o", str(out), "--snp-provider", "simulated", "--snp-sim-dir",
             env.sim.directory)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == b"the disk key \x00\x01\x02"
    assert os.stat(out).st_mode & 0o777 == 0o600
    # a name the authority does not know: one line naming the check, exit 1
    r = ctpm("secret", "get", "--tcti", env.tpm.tcti(), "--name", "nothing", "--verifier",
             env.svc.url, "--audience", AUDIENCE, "-o", "-", "--snp-provider", "simulated",
             "--snp-sim-dir", env.sim.directory)
    assert r.returncode == 1 and b"unknown_secret" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_seal_with_the_authority_key_file(env, tmp_path):
    """--authority PEM (offline) names the same key as --authority URL."""
    (tmp_path / "s.bin").write_bytes(b"x" * 10)
    rec = tmp_path / "rec.json"
    r = ctpm("secret", "seal", "--tcti", env.tpm.tcti(), "--name", "offline", "--in",
             str(tmp_path / "s.bin"), "--authority", env.authority_key, "-o", str(rec))
    assert r.returncode == 0, r.stderr
    assert json.loads(rec.read_text())["authority"] == env.authority_public.hex()


def test_large_blob_is_enveloped_and_comes_back(env):
    blob = os.urandom(5000)
    record = env.seal("model", blob)
    assert "envelope" in record and blob.hex() not in json.dumps(record)
    assert env.get("model") == blob


def test_secret_never_crosses_the_relay_in_clear(env):
    secret = b"SECRET-" + os.urandom(24).hex().encode()
    with Relay(env.tpm.mssim_port) as relay:
        # sealing crosses the relay too: TPM2_Create's secret is parameter-encrypted
        t = TctiTransport(relay.tcti)
        try:
            rec = seal(TpmChannel(t), "scanned", secret, parse_selection("sha256:0,7"),
                       env.authority_public)
        finally:
            t.close()
        with open(os.path.join(env.secrets, "scanned.json"), "w") as f:
            json.dump(rec, f)
        assert env.get("scanned", tcti=relay.tcti) == secret
        wire = bytes(relay.wire)
    assert len(wire) > 5000
    assert secret not in wire and secret[7:] not in wire
    assert CC_UNSEAL.to_bytes(4, "big") in wire          # the unseal did cross the relay


def test_secret_in_an_nv_index(env, tmp_path):
    """`seal --nv-index`: the secret lives in the TPM's NV, readable only through the policy
    (the owner's own NV_Read is refused), written once."""
    (tmp_path / "s.bin").write_bytes(b"nv secret \xff")
    r = ctpm("secret", "seal", "--tcti", env.tpm.tcti(), "--name", "nvs", "--in",
             str(tmp_path / "s.bin"), "--authority", env.svc.url, "--nv-index", "01500040",
             "-o", os.path.join(env.secrets, "nvs.json"))
    assert r.returncode == 0, r.stderr
    record = json.load(open(os.path.join(env.secrets, "nvs.json")))
    assert record["kind"] == "nv-index" and "private" not in record
    assert env.get("nvs") == b"nv secret \xff"
    t = TctiTransport(env.tpm.tcti())
    tpm = TpmChannel(t)
    try:
        with pytest.raises(TpmError) as e:              # the owner cannot read it
            tpm.call("NV_Read", u16(4) + u16(0), handles=[0x40000001, 0x01500040],
                     auths=[b""])
        assert e.value.rc == 0x149                      # TPM_RC_NV_AUTHORIZATION
        with pytest.raises(TpmError):                   # nor write it again
            tpm.call("NV_Write", b2(b"x") + u16(0), handles=[0x40000001, 0x01500040],
                     auths=[b""])
    finally:
        t.close()
    big = os.urandom(2000)                              # over one NV_Read: enveloped
    env.seal("nvbig", big, nv_index=0x01500041)
    assert env.get("nvbig") == big


def test_a_tee_provisions_a_secret_into_the_tpm(env):
    """`secret put`'s library: the TPM attested first, the secret parameter-encrypted in a
    session salted to K with the TEE's key, sealed to the quoted PCR values, the record
    registered with a TEE token; then any attested TEE gets it. Through the relay, in clear
    nowhere; a second registration of the name is refused."""
    from ctpm.channel.client import provision_secret
    secret = b"provisioned-" + os.urandom(12).hex().encode()
    with Relay(env.tpm.mssim_port) as relay:
        t = TctiTransport(relay.tcti)
        try:
            record = provision_secret(t, "from-tee", secret, env.svc.url, audience=AUDIENCE,
                                      provider=env.provider(), pcrs=PCRS)
        finally:
            t.close()
        assert env.get("from-tee", tcti=relay.tcti) == secret
        assert secret not in bytes(relay.wire)
    assert os.path.exists(os.path.join(env.secrets, "from-tee.json"))
    t = TctiTransport(env.tpm.tcti())
    try:
        with pytest.raises(ChannelError) as e:
            provision_secret(t, "from-tee", b"again", env.svc.url, audience=AUDIENCE,
                             provider=env.provider(), pcrs=PCRS)
        assert e.value.check == "secret_exists"
        with pytest.raises(ChannelError) as e:
            provision_secret(t, "not-quoted", b"x", env.svc.url, audience=AUDIENCE,
                             provider=env.provider(), pcrs=PCRS, seal_pcrs="sha256:16")
        assert e.value.check == "seal_pcrs"
    finally:
        t.close()
    key, token = _tee_token(env)
    vc = VerifierClient(env.svc.url)
    bad = dict(record, name="foreign", authority=P.authority_public(
        ec.generate_private_key(ec.SECP256R1()).public_key()).hex())
    with pytest.raises(ChannelError) as e:
        vc.register(token, bad)
    assert e.value.check == "record"
    with pytest.raises(ChannelError) as e:
        vc.register("not.a.token", dict(record, name="x2"))
    assert e.value.check == "tee_token"
    from ctpm.attest.tokens import ServiceKey
    closed = Authority(load_key(env.authority_key), SecretStore(env.secrets),
                       jwks=ServiceKey.load(env.key).jwks(), issuer=env.svc.url,
                       audience=AUDIENCE)
    with pytest.raises(AuthorityError) as e:
        closed.register({"token": token, "record": dict(record, name="x3")})
    assert e.value.check == "registration_disabled"


def test_put_on_the_command_line(env, tmp_path):
    (tmp_path / "s.bin").write_bytes(b"put by a TEE")
    sim = ("--snp-provider", "simulated", "--snp-sim-dir", env.sim.directory)
    r = ctpm("secret", "put", "--tcti", env.tpm.tcti(), "--name", "cli-put", "--in",
             str(tmp_path / "s.bin"), "--verifier", env.svc.url, "--audience", AUDIENCE,
             "--nv-index", "01500042", "-o", str(tmp_path / "rec.json"), *sim)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "rec.json").read_text())["kind"] == "nv-index"
    r = ctpm("secret", "get", "--tcti", env.tpm.tcti(), "--name", "cli-put", "--verifier",
             env.svc.url, "--audience", AUDIENCE, "-o", "-", *sim)
    assert r.returncode == 0 and r.stdout == b"put by a TEE", r.stderr
    r = ctpm("secret", "put", "--tcti", env.tpm.tcti(), "--name", "cli-put2", "--in",
             str(tmp_path / "s.bin"), "--verifier", env.svc.url, "--audience", AUDIENCE,
             "--no-register", *sim)
    assert r.returncode == 2 and b"--no-register needs -o" in r.stderr


def test_the_svsm_mode_vtpm(env, tmp_path):
    """`secret get --svsm`: the TPM commands and the vTPM's SNP report through the SVSM
    protocols of a `ctpm run --mode svsm` instance."""
    sock = tmp_path / "vm.svsm"
    with run_daemon("--mode", "svsm", "--svsm", f"unix:{sock}", "--snp-provider", "simulated",
                    "--snp-sim-dir", env.sim.directory, timeout=30) as d:
        t = TctiTransport(d.tcti())
        try:
            tpm = TpmChannel(t)
            from ctpm.channel.cli import startup
            startup(tpm)
            rec = seal(tpm, "svsm-secret", b"via the SVSM", parse_selection("sha256:0,7"),
                       env.authority_public)
        finally:
            t.close()
        with open(os.path.join(env.secrets, "svsm-secret.json"), "w") as f:
            json.dump(rec, f)
        out = tmp_path / "out"
        r = ctpm("secret", "get", "--svsm", f"unix:{sock}", "--name", "svsm-secret",
                 "--verifier", env.svc.url, "--audience", AUDIENCE, "-o", str(out),
                 "--snp-provider", "simulated", "--snp-sim-dir", env.sim.directory)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == b"via the SVSM"


def test_pcrs_changed_after_sealing_are_refused_by_the_tpm(env):
    """Sealed to PCR 16; extending it makes the TPM refuse the unseal; resetting it (PCR 16 is
    the debug PCR) makes the secret available again."""
    env.seal("pcr16", b"needs pcr 16", pcrs="sha256:16")
    t = TctiTransport(env.tpm.tcti())
    tpm = TpmChannel(t)
    try:
        tpm.call("PCR_Extend", u32(1) + u16(0x0B) + bytes(32), handles=[16], auths=[b""])
        with pytest.raises(TpmError) as e:
            env.get("pcr16")
        assert e.value.command == "Unseal" and e.value.rc & 0xFFF == 0x99D   # POLICY_FAIL
        tpm.call("PCR_Reset", handles=[16], auths=[b""])
    finally:
        t.close()
    assert env.get("pcr16") == b"needs pcr 16"


# --- the relay's attacks ------------------------------------------------------------------------

def _start_auth_parts(command):
    """(tpmKey, bind, nonceCaller, encryptedSalt, rest) of a StartAuthSession command."""
    tpm_key, bind = struct.unpack(">II", command[10:18])
    nonce, pos = take_b2(command, 18)
    salt, pos2 = take_b2(command, pos)
    return tpm_key, bind, nonce, salt, command[pos2:]


def _rebuild(command, body):
    tag, _, cc = struct.unpack(">HII", command[:10])
    return struct.pack(">HII", tag, 10 + len(body), cc) + body


def _salted_start(command):
    return command_code(command) == CC_START_AUTH and struct.unpack(">I", command[10:14])[0] \
        != 0x40000007


def test_relay_replacing_the_tee_key_in_the_salt(env):
    """The relay salts the session with its own key instead of Q_T: it would know the session
    key, but the TEE's confirmation (a response HMAC under the key it derived) fails before
    any authorization is asked for."""
    env.seal("qt", b"q_t test")
    mine = ec.generate_private_key(ec.SECP256R1())
    x, y = (v.to_bytes(32, "big") for v in (mine.public_key().public_numbers().x,
                                              mine.public_key().public_numbers().y))

    def swap(command):
        if _salted_start(command):
            key, bind, nonce, _, rest = _start_auth_parts(command)
            return _rebuild(command, u32(key) + u32(bind) + b2(nonce) + b2(b2(x) + b2(y))
                            + rest)
        return command
    with Relay(env.tpm.mssim_port, on_command=swap) as relay:
        with pytest.raises(ChannelError) as e:
            env.get("qt", tcti=relay.tcti)
        # the TPM refuses the confirmation's command HMAC (made with the TEE's key)
        assert isinstance(e.value, TpmError) and e.value.command == "GetRandom", e.value
        assert not any(command_code(c) == CC_POLICY_SIGNED for c in relay.commands)


def test_relay_replacing_the_channel_key(env):
    """The relay points the session at another restricted key K' in the same TPM: the TPM
    then salts with K', the TEE with the attested K - the confirmation fails."""
    env.seal("k", b"k test")
    t = TctiTransport(env.tpm.tcti())
    other, _ = create_primary(TpmChannel(t), P.channel_key_template())

    def swap(command):
        if _salted_start(command):
            return command[:10] + u32(other) + command[14:]
        return command
    try:
        with Relay(env.tpm.mssim_port, on_command=swap) as relay:
            with pytest.raises(ChannelError) as e:
                env.get("k", tcti=relay.tcti)
            assert isinstance(e.value, TpmError) and e.value.command == "GetRandom", e.value
    finally:
        TpmChannel(t).flush(other)
        t.close()


def test_relay_substituting_the_channel_key_public(env):
    """The relay hands the TEE another K public than the TPM made: the verifier finds that the
    AK certified a different Name, and issues no token."""
    env.seal("kpub", b"kpub test")

    def swap(command, response):
        if command_code(command) == 0x131 and struct.pack(">I", P.K_ATTRIBUTES) in command \
                and b2(bytes(32)) + b2(bytes(32)) not in command:        # K, not the SRK
            handle = response[10:14]
            psize = struct.unpack(">I", response[14:18])[0]
            params = response[18:18 + psize]
            public, pos = take_b2(params)
            forged = public[:-68] + b2(os.urandom(32)) + public[-34:]
            new = b2(forged) + params[pos:]
            body = handle + u32(len(new)) + new + response[18 + psize:]
            return struct.pack(">HII", 0x8002, 10 + len(body), 0) + body
        return response
    with Relay(env.tpm.mssim_port, on_response=swap) as relay:
        with pytest.raises(ChannelError) as e:
            env.get("kpub", tcti=relay.tcti)
    assert e.value.check == "channel_key_name"


def test_relay_clearing_the_encrypt_bit(env):
    """Without PolicyAuthValue a policy session has no command HMAC and the relay could ask for
    the secret in clear; with it the TPM refuses the edited session."""
    secret = b"encrypt-bit-" + os.urandom(8).hex().encode()
    env.seal("encbit", secret)

    def strip(command):
        if command_code(command) == CC_UNSEAL:
            cmd = bytearray(command)
            pos = 10 + 4 + 4 + 4
            nonce_size = struct.unpack(">H", cmd[pos:pos + 2])[0]
            cmd[pos + 2 + nonce_size] &= ~0x40 & 0xFF
            return bytes(cmd)
        return command
    with Relay(env.tpm.mssim_port, on_command=strip) as relay:
        with pytest.raises(TpmError) as e:
            env.get("encbit", tcti=relay.tcti)
        assert e.value.command == "Unseal"
        assert secret not in bytes(relay.wire)


def _capture(env, name):
    with Relay(env.tpm.mssim_port) as relay:
        env.get(name, tcti=relay.tcti)
        return list(relay.commands)


def test_relay_replaying_an_old_authorization(env):
    """PolicySigned with an earlier session's nonceTPM and signature: the TPM refuses it."""
    env.seal("replay-auth", b"replay auth")
    old = [c for c in _capture(env, "replay-auth") if command_code(c) == CC_POLICY_SIGNED][0]

    def replay(command):
        if command_code(command) == CC_POLICY_SIGNED:
            return command[:18] + old[18:]          # today's handles, yesterday's parameters
        return command
    with Relay(env.tpm.mssim_port, on_command=replay) as relay:
        with pytest.raises(TpmError) as e:
            env.get("replay-auth", tcti=relay.tcti)
    assert e.value.command == "PolicySigned"


def test_relay_replaying_an_old_sessions_messages(env):
    """The earlier session's Unseal, HMAC and all, sent in today's session: refused."""
    secret = b"replay-session-" + os.urandom(4).hex().encode()
    env.seal("replay-session", secret)
    old = [c for c in _capture(env, "replay-session") if command_code(c) == CC_UNSEAL][0]

    def replay(command):
        if command_code(command) == CC_UNSEAL:
            return command[:10] + command[10:14] + old[14:]    # today's object, old session
        return command
    with Relay(env.tpm.mssim_port, on_command=replay) as relay:
        with pytest.raises(TpmError) as e:
            env.get("replay-session", tcti=relay.tcti)
        assert e.value.command == "Unseal"
        assert secret not in bytes(relay.wire)


# --- the authority's refusals -------------------------------------------------------------------

def _tee_token(env, key=None, **fields):
    vc = VerifierClient(env.svc.url)
    key = key or TeeKey()
    nonce = vc.challenge()
    return key, vc.attest_tee(nonce, tee_evidence(env.provider(**fields), nonce.hex(), key))


def _request(env, name, token, salt_key, *, cp_hash=None, ref=None, expiration=-60):
    rec = json.load(open(os.path.join(env.secrets, name + ".json")))
    return {"token": token, "secret": name, "nonce_tpm": os.urandom(32).hex(),
            "cp_hash": (cp_hash or P.unseal_cp_hash(bytes.fromhex(rec["object_name"]))).hex(),
            "policy_ref": (ref or P.policy_ref(name)).hex(), "expiration": expiration,
            "salt_key": salt_key}


def _refused(env, body, check):
    with pytest.raises(ChannelError) as e:
        VerifierClient(env.svc.url).authorize(body)
    assert e.value.check == check, e.value


def test_authority_answers_a_jwe_only_the_tee_opens(env):
    from ctpm.channel.authority import decrypt_with
    env.seal("authz", b"authz")
    key, token = _tee_token(env)
    answer = VerifierClient(env.svc.url).authorize(_request(env, "authz", token, key.jwk))
    payload = json.loads(decrypt_with(key.private, answer["jwe"]))
    assert len(bytes.fromhex(payload["signature"])) == 72
    with pytest.raises(ValueError):
        decrypt_with(TeeKey().private, answer["jwe"])


def test_authority_refusals(env):
    env.seal("authz2", b"authz2")
    env.seal("other", b"other")
    key, token = _tee_token(env)
    other_key, other_token = _tee_token(env)
    _refused(env, {"token": token}, "authorize_format")
    _refused(env, _request(env, "authz2", "x.y.z", key.jwk), "tee_token")
    # a token of another TEE for this session's key
    _refused(env, _request(env, "authz2", other_token, key.jwk), "salt_key")
    _refused(env, _request(env, "authz2", token, key.jwk) | {"secret": "nope"}, "unknown_secret")
    _refused(env, _request(env, "authz2", token, key.jwk, ref=P.policy_ref("other")),
             "policy_ref")
    other_rec = json.load(open(os.path.join(env.secrets, "other.json")))
    _refused(env, _request(env, "authz2", token, key.jwk, cp_hash=P.unseal_cp_hash(
        bytes.fromhex(other_rec["object_name"]))), "cp_hash")
    _refused(env, _request(env, "authz2", token, key.jwk, cp_hash=P.nv_read_cp_hash(
        bytes(34), 32, 0)), "cp_hash")
    for expiration in (0, 60, -100000):
        _refused(env, _request(env, "authz2", token, key.jwk, expiration=expiration),
                 "expiration")
    # a TPM token (composite, cnf = K) is not a TEE token
    t = TctiTransport(env.tpm.tcti())
    try:
        from ctpm.channel import tpmside
        vc = VerifierClient(env.svc.url)
        nonce = vc.challenge()
        doc, k = tpmside.attest(TpmChannel(t), nonce, pcrs=PCRS)
        tpm_token = vc.attest(nonce, doc)
        TpmChannel(t).flush(k.handle)
    finally:
        t.close()
    k_jwk = {"kty": "EC", "crv": "P-256", "x": E.b64u(k.point[0]), "y": E.b64u(k.point[1])}
    _refused(env, _request(env, "authz2", tpm_token, k_jwk), "tee_token")


def test_authority_refuses_an_expired_token(env):
    env.seal("expired", b"expired")
    key, token = _tee_token(env)
    from ctpm.attest.tokens import ServiceKey
    authority = Authority(load_key(env.authority_key), SecretStore(env.secrets),
                          jwks=ServiceKey.load(env.key).jwks(), issuer=env.svc.url,
                          audience=AUDIENCE)
    body = _request(env, "expired", token, key.jwk)
    assert "jwe" in authority.authorize(body)
    with pytest.raises(AuthorityError) as e:
        authority.authorize(body, now=time.time() + 3600)
    assert e.value.check == "tee_token" and "expired" in e.value.message


def test_a_secret_for_other_tee_measurements(env):
    env.seal("pinned", b"pinned", tee_measurements=["aa" * 48])
    with pytest.raises(ChannelError) as e:
        env.get("pinned")
    assert e.value.check == "tee_measurement"
    assert env.get("pinned", provider=env.provider(measurement=bytes.fromhex("aa" * 48))) \
        == b"pinned"


def test_verifier_refuses_a_tee_with_a_wrong_measurement(env):
    policy = write_policy(env.dir, env.sim, pcrs=PCRS, policy_id="tee-pinned",
                          extra=f'[tee]\nmeasurements = ["{"bb" * 48}"]')
    with run_service(policy, env.key) as svc:
        vc = VerifierClient(svc.url)
        nonce = vc.challenge()
        with pytest.raises(ChannelError) as e:
            vc.attest_tee(nonce, tee_evidence(env.provider(), nonce.hex(), TeeKey()))
        assert e.value.check == "measurement"
        nonce = vc.challenge()
        vc.attest_tee(nonce, tee_evidence(env.provider(measurement=bytes.fromhex("bb" * 48)),
                                          nonce.hex(), TeeKey()))


def test_verifier_refuses_tee_evidence_for_another_key_or_nonce(env):
    vc = VerifierClient(env.svc.url)
    key = TeeKey()
    nonce = vc.challenge()
    payload = tee_evidence(env.provider(), nonce.hex(), key)
    payload["tee-pubkey"] = TeeKey().jwk                    # the report binds another key
    with pytest.raises(ChannelError) as e:
        vc.attest_tee(nonce, payload)
    assert e.value.check == "report_data"
    nonce2 = vc.challenge()
    with pytest.raises(ChannelError) as e:                  # evidence for the spent nonce
        vc.attest_tee(nonce2, tee_evidence(env.provider(), nonce.hex(), key))
    assert e.value.check == "report_data"
    with pytest.raises(ChannelError) as e:
        vc.attest_tee(nonce2, tee_evidence(env.provider(), nonce2.hex(), key))
    assert e.value.check == "nonce_replayed"
    nonce3 = vc.challenge()
    bad = tee_evidence(env.provider(), nonce3.hex(), key)
    bad["tee-pubkey"] = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}
    with pytest.raises(ChannelError) as e:
        vc.attest_tee(nonce3, bad)
    assert e.value.check == "tee_key"


# --- the TEE's check of the TPM token -----------------------------------------------------------

def test_tee_checks_the_tpm_token(env):
    from ctpm.channel import tpmside
    vc = VerifierClient(env.svc.url)
    jwks = vc.jwks()
    t = TctiTransport(env.tpm.tcti())
    tpm = TpmChannel(t)
    try:
        nonce = vc.challenge()
        doc, k = tpmside.attest(tpm, nonce, pcrs=PCRS)
        token = vc.attest(nonce, doc)
        tpm.flush(k.handle)
    finally:
        t.close()
    claims = check_tpm_token(token, jwks, audience=AUDIENCE, k_point=k.point, nonce=nonce)
    assert claims["cnf"]["jwk"]["kid"] == k.name.hex()
    with pytest.raises(ChannelError) as e:
        check_tpm_token(token, jwks, audience=AUDIENCE, k_point=k.point, nonce=os.urandom(64))
    assert e.value.check == "tpm_token" and "eat_nonce" in e.value.message
    with pytest.raises(ChannelError) as e:
        check_tpm_token(token, jwks, audience=AUDIENCE, k_point=(bytes(32), bytes(32)))
    assert e.value.check == "tpm_token_key"
    with pytest.raises(ChannelError) as e:
        check_tpm_token(token, jwks, audience=AUDIENCE, k_point=k.point, ek_name=bytes(34))
    assert e.value.check == "tpm_token_ek"
    with pytest.raises(ChannelError) as e:
        check_tpm_token(token, jwks, audience="someone-else", k_point=k.point)
    assert e.value.check == "tpm_token"
    _, tee_token = _tee_token(env)
    with pytest.raises(ChannelError) as e:
        check_tpm_token(tee_token, jwks, audience=AUDIENCE, k_point=k.point)
    assert e.value.check == "tpm_token" and "type" in e.value.message


# --- the verifier's channel-key checks ----------------------------------------------------------

def test_channel_key_checks_each_fail_on_purpose(env):
    from ctpm.attest.verify import AttestPolicy, verify_evidence
    from ctpm.channel import tpmside
    from ctpm.snp.verify import Trust
    policy = AttestPolicy(trust=Trust(extra_arks=(env.sim.ark,)), pcrs=PCRS)
    t = TctiTransport(env.tpm.tcti())
    tpm = TpmChannel(t)
    try:
        nonce = os.urandom(64)
        doc, k = tpmside.attest(tpm, nonce, pcrs=PCRS)
        nonce2 = os.urandom(64)
        doc2, k2 = tpmside.attest(tpm, nonce2, pcrs=PCRS)
        tpm.flush(k.handle)
        tpm.flush(k2.handle)
    finally:
        t.close()
    ok = verify_evidence(doc, nonce, policy)
    assert ok.confirmed_key["kid"] == k.name.hex()

    def member(d, label, data):
        d = dict(d)
        d[label] = [d[label][0], E.b64u(data)]
        return d

    def refused(d, check):
        with pytest.raises(Exception) as e:
            verify_evidence(d, nonce, policy)
        assert getattr(e.value, "check", None) == check, e.value

    public = E.unb64u(doc["channel-key"][1])
    certify = E.unb64u(doc["channel-key-certify"][1])
    refused(member(doc, "channel-key", public + b"\0"), "channel_key_format")
    unrestricted = public[:4] + struct.pack(">I", P.K_ATTRIBUTES & ~P.RESTRICTED) + public[8:]
    refused(member(doc, "channel-key", unrestricted), "channel_key_attributes")
    signer = public[:4] + struct.pack(">I", P.K_ATTRIBUTES | P.SIGN) + public[8:]
    refused(member(doc, "channel-key", signer), "channel_key_attributes")
    refused(member(doc, "channel-key-certify", certify[:-1] + bytes([certify[-1] ^ 1])),
            "channel_key_certify")
    # another evidence's certification (another nonce): signed by the AK, wrong extraData
    other = member(member(doc, "channel-key-certify",
                          E.unb64u(doc2["channel-key-certify"][1])),
                   "channel-key-signature", E.unb64u(doc2["channel-key-signature"][1]))
    refused(other, "channel_key_certify")
    # K2's public with K's certification: the certified Name is not K2's
    refused(member(doc, "channel-key", E.unb64u(doc2["channel-key"][1])), "channel_key_name")
    partial = dict(doc)
    del partial["channel-key-signature"]
    refused(partial, "evidence_format")


# --- standard TPM commands only: swtpm as the TPM ----------------------------------------------

def test_the_channel_with_swtpm_as_the_tpm():
    """The key agreement, the sealed object and the NV secret need nothing of ctpm: libtpms
    (swtpm) does every step, with this library's sessions, HMACs and parameter encryption."""
    from ctpm.channel.secrets import Unsealer
    from tests.peers import Swtpm
    swtpm = Swtpm()
    try:
        swtpm.execute(bytes.fromhex("80010000000c000001440000"))       # Startup(CLEAR)
        tpm = TpmChannel(swtpm.execute)
        authority = ec.generate_private_key(ec.SECP256R1())
        public = P.authority_public(authority.public_key())
        sel = parse_selection("sha256:0,7")
        records = [seal(tpm, "obj", b"object secret", sel, public),
                   seal(tpm, "big", b"B" * 500, sel, public),
                   seal(tpm, "nv", b"nv secret", sel, public, nv_index=0x01500050)]
        k, kpub = create_primary(tpm, P.channel_key_template())
        info = P.parse_ecc_public(kpub)
        tee = TeeKey()
        asked = []

        def authorize(nonce_tpm, cp_hash, ref, expiration):
            asked.append(cp_hash)
            return P.sign_authorization(authority, nonce_tpm, expiration, cp_hash, ref)
        got = [Unsealer(tpm, rec, k_handle=k, k_point=(info["x"], info["y"]),
                        tee_key=tee.private).run(authorize) for rec in records]
        assert got == [b"object secret", b"B" * 500, b"nv secret"]
        assert len(set(asked)) == 3
        # a signature by another key: libtpms refuses PolicySigned
        other = ec.generate_private_key(ec.SECP256R1())
        with pytest.raises(TpmError) as e:
            Unsealer(tpm, records[0], k_handle=k, k_point=(info["x"], info["y"]),
                     tee_key=tee.private).run(
                lambda n, c, r, x: P.sign_authorization(other, n, x, c, r))
        assert e.value.command == "PolicySigned"
    finally:
        swtpm.close()


def test_admin_token_file_is_checked(env, tmp_path):
    (tmp_path / "short").write_text("abc")
    r = ctpm("verifier", "serve", "--listen", "127.0.0.1:0", "--policy", env.policy, "--key",
             env.key, "--authority-key", env.authority_key, "--audience", "x", "--secrets",
             env.secrets, "--admin-token-file", str(tmp_path / "short"))
    assert r.returncode == 2 and b"at least 32 characters" in r.stderr


def test_the_authority_needs_an_audience(env):
    r = ctpm("verifier", "serve", "--listen", "127.0.0.1:0", "--policy", env.policy, "--key",
             env.key, "--authority-key", env.authority_key)
    assert r.returncode == 2 and b"--authority-key needs --audience" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = ctpm("verifier", "serve", "--listen", "127.0.0.1:0", "--policy", env.policy, "--key",
             env.key, "--secrets", env.secrets, "--audience", "x")
    assert r.returncode == 2 and b"need --authority-key" in r.stderr


def test_bad_requests_to_the_channel_endpoints(env):
    import urllib.request
    from urllib.error import HTTPError

    def send(method, path, data=None, ctype="application/json"):
        req = urllib.request.Request(env.svc.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except HTTPError as e:
            assert e.headers["Content-Type"] == "application/problem+json"
            return e.code, json.loads(e.read())
    assert send("POST", "/authorize", b"{not json")[1]["check"] == "malformed_json"
    assert send("POST", "/authorize", b"{}", "text/plain")[1]["check"] == "content_type"
    assert send("POST", "/authorize", b"[1, 2]")[1]["check"] == "authorize_format"
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(env.svc.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest("POST", "/authorize")       # announces 2 MiB: refused before reading
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["check"] == "body_too_large"
    conn.sock.settimeout(10)
    conn.sock.recv(1)                            # the server closes first (then so do we)
    conn.close()
    assert send("POST", "/attest/tee", b'{"nonce": "zz"}')[1]["check"] == "nonce_format"
    assert send("POST", "/attest/tee", b'{"nonce": 5}')[1]["check"] == "request_format"
    for name in ("..%2F..%2Fetc%2Fpasswd", "a" * 65, "%00", "x.json"):
        status, body = send("GET", "/secrets/" + name)
        assert status == 404 and body["check"] in ("unknown_secret", "not_found"), name
    assert send("POST", "/secrets", b'{"record": 1}')[1]["check"] == "authorize_format"
    assert "Traceback" not in env.svc.log()


def test_through_passthrough_mode(env, tmp_path):
    """A hardware TPM (swtpm standing in) behind `ctpm run --mode passthrough --anchor`: K is
    made and certified on the chip by the chip's AK (made again from its template: passthrough
    persists nothing there), the evidence indices are ctpm's; seal, put and get work, and the
    secret is sealed in the chip."""
    from tests.modes.test_passthrough import passthrough
    from tests.peers import TctiSwtpm
    from tests.tpmcmd import STARTUP_CLEAR, rc
    sw = TctiSwtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        with passthrough(sw, "--anchor", "--snp-provider", "simulated", "--snp-sim-dir",
                         env.sim.directory) as d:
            t = TctiTransport(d.tcti("mssim"))
            try:
                rec = seal(TpmChannel(t), "chip", b"in the chip", parse_selection("sha256:0,7"),
                           env.authority_public, nv_index=0x015000F0)
            finally:
                t.close()
            with open(os.path.join(env.secrets, "chip.json"), "w") as f:
                json.dump(rec, f)
            assert env.get("chip", tcti=d.tcti("mssim")) == b"in the chip"
            from ctpm.channel.client import provision_secret
            t = TctiTransport(d.tcti("mssim"))
            try:
                provision_secret(t, "chip-put", b"put in the chip", env.svc.url,
                                 audience=AUDIENCE, provider=env.provider(), pcrs=PCRS,
                                 nv_index=0x015000F1)
            finally:
                t.close()
            assert env.get("chip-put", tcti=d.tcti("mssim")) == b"put in the chip"
        # the NV secret is the chip's own index now (passthrough forwarded the define)
        sw.disconnect()
        out = sw.execute(bytes.fromhex("80010000000e00000169015000f0"))
        assert rc(out) == 0
    finally:
        sw.close()
