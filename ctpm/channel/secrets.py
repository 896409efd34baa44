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
from .tpm import (A_DECRYPT, A_ENCRYPT, RH_NULL, RH_OWNER, SE_HMAC, SE_POLICY,
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
         ek_name: bytes | None = None, nv_index: int | None = None, session_key=None,
         pcr_values: dict | None = None) -> dict:
    """Seal `data` in the TPM behind `tpm` for TEEs the authority vouches for; the record.

    By default a sealed data object (its blobs in the record); with `nv_index`, an NV index
    read only through the policy (TPMA_NV_POLICYREAD, written once and write-locked), which
    survives in the TPM's own NV. `session_key`: (K handle, K point, private key) to salt the
    parameter-encryption session to the channel key with the TEE's key (`provision`);
    default: a session salted to the storage root with a throw-away key. `pcr_values`: the
    PCR values to seal to (default: read from the TPM)."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError("a secret's name is 1-64 letters, digits, '-', '_' or '.'")
    if not data:
        raise ValueError("the secret is empty")
    if nv_index is not None and not P.NV_FIRST <= nv_index <= P.NV_LAST:
        raise ValueError(f"NV index {nv_index:#x} is not an ordinary index "
                         f"({P.NV_FIRST:#x}-{P.NV_LAST:#x})")
    envelope = None
    sealed = bytes(data)
    limit = P.MAX_SEALED if nv_index is None else P.MAX_NV_SECRET
    if len(data) > limit:
        key, nonce = AESGCM.generate_key(256), os.urandom(12)
        envelope = {"alg": "A256GCM", "nonce": nonce.hex(),
                    "ciphertext": AESGCM(key).encrypt(nonce, bytes(data),
                                                      P.policy_ref(name)).hex()}
        sealed = key
    values = pcr_values if pcr_values is not None else read_pcrs(tpm, selection)
    digest = P.pcr_digest(selection, values)
    authority_name = P.name_of(authority_public)
    ref = P.policy_ref(name)
    policy = P.policy_digest(selection, digest, authority_name, ref)
    record = {"version": RECORD_VERSION, "name": name, "pcrs": _format(selection),
              "pcr_digest": digest.hex(), "policy_ref": ref.hex(),
              "authority": authority_public.hex(), "policy_digest": policy.hex(),
              "sealed_at": int(time.time())}
    if nv_index is None:
        record.update(_seal_object(tpm, sealed, policy, session_key))
    else:
        record.update(_seal_nv(tpm, nv_index, sealed, policy, session_key))
    if envelope:
        record["envelope"] = envelope
    if ek_name:
        record["ek_name"] = bytes(ek_name).hex()
    return record


def _param_session(tpm, session_key, fallback):
    """The session that parameter-encrypts the secret on its way into the TPM."""
    if session_key is not None:
        k_handle, k_point, private = session_key
        session = tpm.start_session(kind=SE_HMAC, tpm_key=k_handle, key_xy=k_point,
                                    ephemeral=private)
        tpm.confirm(session)            # the TPM of the token holds this session's key
        return session
    return _salted_hmac_session(tpm, *fallback())


def _seal_object(tpm, sealed, policy, session_key) -> dict:
    srk, srk_public = create_primary(tpm, P.srk_template())
    try:
        session = _param_session(tpm, session_key, lambda: (srk, srk_public))
        sensitive = b2(b2(b"") + b2(sealed))            # TPM2B_SENSITIVE_CREATE
        params = sensitive + b2(P.sealed_template(policy)) + u16(0) + u32(0)
        try:        # continueSession clear: the session ends with a successful Create
            _, rparams = tpm.call("Create", params, handles=[srk],
                                  names=[P.name_of(srk_public)], auths=[session],
                                  session=session, session_attrs=A_DECRYPT)
        except BaseException:
            tpm.flush(session.handle)
            raise
        private, pos = take_b2(rparams)
        public, _ = take_b2(rparams, pos)
    finally:
        tpm.flush(srk)
    return {"kind": "sealed-object", "public": public.hex(), "private": private.hex(),
            "object_name": P.name_of(public).hex()}


def _seal_nv(tpm, index, sealed, policy, session_key) -> dict:
    public = P.nv_public(index, P.NV_SECRET_ATTRIBUTES, policy, len(sealed))
    tpm.call("NV_DefineSpace", b2(b"") + b2(public), handles=[RH_OWNER], auths=[b""])
    try:
        if session_key is None:
            srk, srk_public = create_primary(tpm, P.srk_template())
            try:
                session = _salted_hmac_session(tpm, srk, srk_public)
            finally:
                tpm.flush(srk)
        else:
            session = _param_session(tpm, session_key, None)
        try:        # continueSession clear: the session ends with a successful write
            tpm.call("NV_Write", b2(sealed) + u16(0), handles=[RH_OWNER, index],
                     names=[u32(RH_OWNER), P.nv_name(public)], auths=[session],
                     session=session, session_attrs=A_DECRYPT)
        except BaseException:
            tpm.flush(session.handle)
            raise
        tpm.call("NV_WriteLock", handles=[RH_OWNER, index], auths=[b""])
    except BaseException:
        try:
            tpm.call("NV_UndefineSpace", handles=[RH_OWNER, index], auths=[b""])
        except ChannelError:
            pass
        raise
    locked = P.nv_public(index, P.NV_SECRET_ATTRIBUTES | P.NV_WRITTEN | P.NV_WRITELOCKED,
                         policy, len(sealed))
    _, rparams = tpm.call("NV_ReadPublic", handles=[index])
    got, pos = take_b2(rparams)
    name, _ = take_b2(rparams, pos)
    if got != locked or name != P.nv_name(locked):
        raise ChannelError("nv_public", "the TPM's NV public area is not the one defined, "
                                        "written and locked")
    return {"kind": "nv-index", "nv_index": index, "nv_public": locked.hex(),
            "object_name": name.hex(), "size": len(sealed)}


def _format(selection) -> str:
    return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection)


def check_record(record) -> dict:
    """The record's fields, checked for shape (ValueError naming the field)."""
    from ..attest.tpm import parse_selection
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise ValueError(f"not a version-{RECORD_VERSION} secret record")
    out = {"name": record.get("name"), "kind": record.get("kind")}
    if not isinstance(out["name"], str) or not out["name"]:
        raise ValueError("record: name")
    if out["kind"] not in ("sealed-object", "nv-index"):
        raise ValueError("record: kind is neither sealed-object nor nv-index")
    blobs = ("public", "private") if out["kind"] == "sealed-object" else ("nv_public",)
    for field in blobs + ("object_name", "policy_ref", "authority", "pcr_digest"):
        try:
            out[field] = bytes.fromhex(record[field])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"record: {field} is not hex") from None
    try:
        out["selection"] = parse_selection(record["pcrs"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("record: pcrs") from None
    if out["kind"] == "sealed-object":
        if P.name_of(out["public"]) != out["object_name"]:
            raise ValueError("record: object_name is not the Name of public")
        out["cp_hash"] = P.unseal_cp_hash(out["object_name"])
    else:
        index, size = record.get("nv_index"), record.get("size")
        if not isinstance(index, int) or not isinstance(size, int) or \
                not 0 < size <= P.MAX_NV_SECRET:
            raise ValueError("record: nv_index / size")
        if P.nv_name(out["nv_public"]) != out["object_name"] or \
                out["nv_public"][:4] != u32(index):
            raise ValueError("record: object_name is not the Name of nv_public")
        out["nv_index"], out["size"] = index, size
        out["cp_hash"] = P.nv_read_cp_hash(out["object_name"], size, 0)
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
            if rec["kind"] == "sealed-object":
                srk, _ = create_primary(tpm, P.srk_template())
                try:
                    handles, rparams = tpm.call("Load", b2(rec["private"]) + b2(rec["public"]),
                                                handles=[srk], auths=[b""], n_out_handles=1)
                finally:
                    tpm.flush(srk)              # TPMs have few object slots (swtpm: 3)
                item = handles[0]
                loaded.append(item)
                name, _ = take_b2(rparams)
            else:
                item = rec["nv_index"]
                _, rparams = tpm.call("NV_ReadPublic", handles=[item])
                _, pos = take_b2(rparams)
                name, _ = take_b2(rparams, pos)
            if name != rec["object_name"]:
                raise ChannelError("object_name", "the TPM holds the secret under another Name "
                                                  "than the record's")
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
            cp_hash = rec["cp_hash"]
            signature = authorize(session.nonce_tpm, cp_hash, rec["policy_ref"],
                                  self.EXPIRATION)
            tpm.call("PolicySigned", b2(session.nonce_tpm) + b2(cp_hash)
                     + b2(rec["policy_ref"]) + struct_i32(self.EXPIRATION) + signature,
                     handles=[authority, session.handle])
            tpm.call("PolicyAuthValue", handles=[session.handle])
            session.needs_hmac = True
            if rec["kind"] == "sealed-object":
                _, rparams = tpm.call("Unseal", handles=[item], names=[rec["object_name"]],
                                      auths=[session], session=session,
                                      session_attrs=A_ENCRYPT)
            else:
                _, rparams = tpm.call("NV_Read", u16(rec["size"]) + u16(0),
                                      handles=[item, item],
                                      names=[rec["object_name"], rec["object_name"]],
                                      auths=[session], session=session,
                                      session_attrs=A_ENCRYPT)
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


__all__ = ["seal", "Unsealer", "check_record", "create_primary", "read_pcrs"]
