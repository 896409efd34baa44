"""Sealing a secret for attested TEEs, and unsealing it over the salted session.

`seal()` (the operator, once): the secret is sealed under the TPM's storage root with the
channel policy (protocol.policy_digest); TPM2_Create runs in an HMAC session salted to the
storage root, with the secret parameter-encrypted, so the bytes to the TPM carry no secret in
clear. Secrets over 128 bytes (TPM2_Create's limit) are enveloped: a fresh AES-256-GCM key is
what the TPM seals, the ciphertext travels with the record. The result is a *record* (JSON,
no secret in it) that the authority serves and the TEE loads.

`unseal()` (the TEE, every time) is the end of docs/channel.md's flow: load the record's
object, start a policy session salted to K with Q_T, confirm the TPM holds its key, PolicyPCR,
ask the authority to sign nonceTPM/cpHash, PolicySigned, PolicyAuthValue, Unseal with the
response encrypted.
"""
import json
import os
import time

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import protocol as P
from .tpm import (A_CONTINUE, A_DECRYPT, A_ENCRYPT, RH_NULL, RH_OWNER, SE_HMAC, SE_POLICY,
                  ChannelError, TpmChannel, b2, take_b2, u16, u32)

RECORD_VERSION = 1


def create_primary(tpm: TpmChannel, template: bytes, hierarchy: int = RH_OWNER,
                   auth: bytes = b"") -> tuple[int, bytes]:
    """(handle, TPMT_PUBLIC) of a primary key."""
    params = b2(u16(0) + u16(0)) + b2(template) + u16(0) + u32(0)
    handles, rparams = tpm.call("CreatePrimary", params, handles=[hierarchy], auths=[auth],
                                n_out_handles=1)
    public, _ = take_b2(rparams)
    return handles[0], public


def read_pcrs(tpm: TpmChannel, selection) -> dict:
    """{bank: {pcr: value}}, PCR_Read eight at a time (no auth, no session)."""
    values = {}
    for bank, pcrs in selection:
        values[bank] = {}
        for i in range(0, len(pcrs), 8):
            chunk = pcrs[i:i + 8]
            _, rparams = tpm.call("PCR_Read", P.pcr_selection(((bank, chunk),)))
            pos = 4                                  # pcrUpdateCounter
            count = int.from_bytes(rparams[pos:pos + 4], "big")     # the selection out
            pos += 4 + count * 6
            n = int.from_bytes(rparams[pos:pos + 4], "big")
            pos += 4
            if n != len(chunk):
                raise ChannelError("tpm_format", f"PCR_Read gave {n} values for {len(chunk)}")
            for pcr in chunk:
                value, pos = take_b2(rparams, pos)
                values[bank][pcr] = value
    return values


def _salted_hmac_session(tpm: TpmChannel, key_handle: int, key_public: bytes):
    info = P.parse_ecc_public(key_public)
    return tpm.start_session(kind=SE_HMAC, tpm_key=key_handle, key_xy=(info["x"], info["y"]),
                             ephemeral=ec.generate_private_key(ec.SECP256R1()))


def seal(tpm: TpmChannel, name: str, data: bytes, selection, authority_public: bytes, *,
         ek_name: bytes | None = None) -> dict:
    """Seal `data` in the TPM behind `tpm` for TEEs the authority vouches for; the record."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError("a secret's name is 1-64 letters, digits, '-', '_' or '.'")
    if not data:
        raise ValueError("the secret is empty")
    envelope = None
    sealed = bytes(data)
    if len(data) > P.MAX_SEALED:
        key, nonce = AESGCM.generate_key(256), os.urandom(12)
        envelope = {"alg": "A256GCM", "nonce": nonce.hex(),
                    "ciphertext": AESGCM(key).encrypt(nonce, bytes(data),
                                                      P.policy_ref(name)).hex()}
        sealed = key
    srk, srk_public = create_primary(tpm, P.srk_template())
    try:
        values = read_pcrs(tpm, selection)
        digest = P.pcr_digest(selection, values)
        authority_name = P.name_of(authority_public)
        ref = P.policy_ref(name)
        policy = P.policy_digest(selection, digest, authority_name, ref)
        session = _salted_hmac_session(tpm, srk, srk_public)
        sensitive = b2(b2(b"") + b2(sealed))            # TPM2B_SENSITIVE_CREATE
        params = sensitive + b2(P.sealed_template(policy)) + u16(0) + u32(0)
        _, rparams = tpm.call("Create", params, handles=[srk], names=[P.name_of(srk_public)],
                              auths=[session], session=session,
                              session_attrs=A_DECRYPT)
        private, pos = take_b2(rparams)
        public, _ = take_b2(rparams, pos)
    finally:
        tpm.flush(srk)
    record = {"version": RECORD_VERSION, "name": name, "kind": "sealed-object",
              "public": public.hex(), "private": private.hex(),
              "object_name": P.name_of(public).hex(),
              "pcrs": _format(selection), "pcr_digest": digest.hex(),
              "policy_ref": ref.hex(), "authority": authority_public.hex(),
              "policy_digest": policy.hex(), "sealed_at": int(time.time())}
    if envelope:
        record["envelope"] = envelope
    if ek_name:
        record["ek_name"] = bytes(ek_name).hex()
    return record


def _format(selection) -> str:
    return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection)


def check_record(record) -> dict:
    """The record's fields, checked for shape (ValueError naming the field)."""
    from ..attest.tpm import parse_selection
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise ValueError(f"not a version-{RECORD_VERSION} secret record")
    out = {"name": record.get("name")}
    if not isinstance(out["name"], str) or not out["name"]:
        raise ValueError("record: name")
    for field in ("public", "private", "object_name", "policy_ref", "authority", "pcr_digest"):
        try:
            out[field] = bytes.fromhex(record[field])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"record: {field} is not hex") from None
    try:
        out["selection"] = parse_selection(record["pcrs"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("record: pcrs") from None
    if P.name_of(out["public"]) != out["object_name"]:
        raise ValueError("record: object_name is not the Name of public")
    env = record.get("envelope")
    if env is not None:
        try:
            out["envelope"] = (bytes.fromhex(env["nonce"]), bytes.fromhex(env["ciphertext"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError("record: envelope") from None
    out["ek_name"] = bytes.fromhex(record["ek_name"]) if record.get("ek_name") else None
    return out


class Unsealer:
    """The TEE's steps after both tokens: one instance per secret retrieval.

    `authorize(nonce_tpm, cp_hash, policy_ref, expiration) -> TPMT_SIGNATURE bytes` is the
    call to the authority (HTTP in `ctpm secret get`, a function in tests)."""

    EXPIRATION = -60        # seconds after nonceTPM; negative: the TPM makes no ticket

    def __init__(self, tpm: TpmChannel, record: dict, *, k_handle: int, k_point: tuple,
                 tee_key: ec.EllipticCurvePrivateKey):
        self.tpm, self.record = tpm, check_record(record)
        self.k_handle, self.k_point, self.tee_key = k_handle, k_point, tee_key
        self.raw_record = record

    def run(self, authorize) -> bytes:
        tpm, rec = self.tpm, self.record
        loaded = []
        session = None
        try:
            srk, _ = create_primary(tpm, P.srk_template())
            try:
                handles, rparams = tpm.call("Load", b2(rec["private"]) + b2(rec["public"]),
                                            handles=[srk], auths=[b""], n_out_handles=1)
            finally:
                tpm.flush(srk)                  # TPMs have few object slots (swtpm: 3)
            item = handles[0]
            loaded.append(item)
            name, _ = take_b2(rparams)
            if name != rec["object_name"]:
                raise ChannelError("object_name", "the TPM loaded an object whose Name is not "
                                                  "the record's")
            handles, rparams = tpm.call("LoadExternal", u16(0) + b2(rec["authority"])
                                        + u32(RH_NULL), n_out_handles=1)
            authority = handles[0]
            loaded.append(authority)
            name, _ = take_b2(rparams)
            if name != P.name_of(rec["authority"]):
                raise ChannelError("authority_name", "the TPM loaded the authority key under "
                                                     "another Name")
            session = tpm.start_session(kind=SE_POLICY, tpm_key=self.k_handle,
                                        key_xy=self.k_point, ephemeral=self.tee_key)
            tpm.confirm(session)                # the response HMAC proves the salt
            tpm.call("PolicyPCR", b2(b"") + P.pcr_selection(rec["selection"]),
                     handles=[session.handle])
            cp_hash = P.unseal_cp_hash(rec["object_name"])
            signature = authorize(session.nonce_tpm, cp_hash, rec["policy_ref"],
                                  self.EXPIRATION)
            tpm.call("PolicySigned", b2(session.nonce_tpm) + b2(cp_hash)
                     + b2(rec["policy_ref"]) + struct_i32(self.EXPIRATION) + signature,
                     handles=[authority, session.handle])
            tpm.call("PolicyAuthValue", handles=[session.handle])
            session.needs_hmac = True
            _, rparams = tpm.call("Unseal", handles=[item], names=[rec["object_name"]],
                                  auths=[session], session=session, session_attrs=A_ENCRYPT)
            session = None                      # continueSession clear: the TPM ended it
            data, _ = take_b2(rparams)
        finally:
            if session is not None:
                tpm.flush(session.handle)
            for handle in reversed(loaded):
                tpm.flush(handle)
        if "envelope" in rec:
            nonce, ciphertext = rec["envelope"]
            try:
                data = AESGCM(data).decrypt(nonce, ciphertext, rec["policy_ref"])
            except Exception:
                raise ChannelError("envelope", "the record's ciphertext does not open with the "
                                               "unsealed key") from None
        return data


def struct_i32(v: int) -> bytes:
    return int(v).to_bytes(4, "big", signed=True)


def load_record(path: str) -> dict:
    with open(path, "rb") as f:
        return json.load(f)


__all__ = ["seal", "Unsealer", "check_record", "create_primary", "read_pcrs", "A_CONTINUE"]
