"""The TPM's side of mutual attestation: composite evidence (ctpm.attest.evidence) for a
verifier's nonce N plus the channel key K, certified by the anchored AK with TPM2_Certify over
the same nonce (qualifyingData = SHA-256(N)). Everything goes through one TPM connection with
raw commands, so the transient K is still loaded when the TEE salts its session to it (a
resource manager flushes a connection's objects when it closes)."""
import struct

from ..attest import evidence as E
from . import protocol as P
from .secrets import create_primary, read_pcrs
from .tpm import RH_OWNER, ChannelError, TpmChannel, b2, take_b2, u16

ALG_NULL = 0x0010


def snp_from_nv(tpm: TpmChannel, nonce: bytes, owner_auth: bytes = b""):
    """(report, cert table, manifest, manifest version, provider) from ctpm's report request
    and evidence NV indices (ephemeral and passthrough mode)."""
    from ..modes.anchor import decode_evidence
    from .tpm import TpmError
    try:
        tpm.call("NV_Write", b2(nonce) + u16(0), handles=[RH_OWNER, E.NV_REQUEST],
                 auths=[owner_auth])
    except TpmError as e:
        if e.rc & 0xFFF in (0x18B, 0x08B):      # TPM_RC_HANDLE: no such index
            raise ChannelError("tpm_evidence", "this TPM has no report request index "
                                               "0x01400002: it is not an anchored ctpm "
                                               "(ephemeral/passthrough); in SVSM mode give "
                                               "--svsm") from None
        raise
    _, rparams = tpm.call("NV_ReadPublic", handles=[E.NV_EVIDENCE])
    nv_public, _ = take_b2(rparams)
    size = struct.unpack_from(">H", nv_public, len(nv_public) - 2)[0]
    blob = b""
    for off in range(0, size, 1024):
        _, rparams = tpm.call("NV_Read", u16(min(1024, size - off)) + u16(off),
                              handles=[RH_OWNER, E.NV_EVIDENCE], auths=[owner_auth])
        chunk, _ = take_b2(rparams)
        blob += chunk
    try:
        ev = decode_evidence(blob)
    except ValueError as e:
        raise ChannelError("tpm_evidence", f"the evidence index: {e}") from None
    if ev.nonce != nonce:
        raise ChannelError("tpm_evidence", "the evidence index answered another nonce")
    return ev.report, ev.cert_table, ev.manifest, ev.manifest_version, ev.provider


class ChannelKey:
    """K in the TPM: its handle and public area (the TEE salts to it, then flushes it)."""

    def __init__(self, handle: int, public: bytes):
        self.handle, self.public = handle, public
        info = P.parse_ecc_public(public)
        self.point = (info["x"], info["y"])
        self.name = P.name_of(public)


def attest(tpm: TpmChannel, nonce: bytes, *, pcrs: str = E.DEFAULT_PCRS, snp=None,
           event_log: bytes | None = None, ima_log: bytes | None = None,
           instance_uuid: str | None = None, ak_handle: int = E.AK_HANDLE,
           owner_auth: bytes = b"") -> tuple[dict, ChannelKey]:
    """(composite evidence with the channel key, K) for `nonce` (64 bytes)."""
    from ..attest.tpm import format_selection, parse_selection
    if len(nonce) != 64:
        raise ValueError(f"the nonce is 64 bytes, got {len(nonce)}")
    selection = parse_selection(pcrs)
    if snp is None:
        snp = snp_from_nv(tpm, nonce, owner_auth)
    report, cert_table, manifest, manifest_version, provider = snp
    qd = E.qualifying_data(nonce)
    ak_handle, made = _ak(tpm, ak_handle, manifest, manifest_version)
    try:
        handle, public = create_primary(tpm, P.channel_key_template(), RH_OWNER, owner_auth)
    except BaseException:
        if made:
            tpm.flush(ak_handle)
        raise
    key = ChannelKey(handle, public)
    try:
        _, rparams = tpm.call("Certify", b2(qd) + u16(ALG_NULL),
                              handles=[handle, ak_handle], auths=[b"", b""])
        certify, pos = take_b2(rparams)
        certify_sig = rparams[pos:]
        _, rparams = tpm.call("Quote", b2(qd) + u16(ALG_NULL) + P.pcr_selection(selection),
                              handles=[ak_handle], auths=[b""])
        quote, pos = take_b2(rparams)
        quote_sig = rparams[pos:]
        values = read_pcrs(tpm, selection)
    except BaseException:
        tpm.flush(handle)
        raise
    finally:
        if made:
            tpm.flush(ak_handle)
    doc = E.build(report=report, cert_table=cert_table, manifest=manifest,
                  manifest_version=manifest_version, provider=provider, quote=quote,
                  signature=quote_sig, pcrs=values, selection=format_selection(selection),
                  event_log=event_log, ima_log=ima_log, instance_uuid=instance_uuid,
                  channel_key=(public, certify, certify_sig))
    return doc, key


def _ak(tpm: TpmChannel, handle: int, manifest: bytes, manifest_version: int):
    """(the AK's handle, whether it was made here): the persistent AK, or - where there is
    none, as in passthrough mode, which persists nothing on the hardware TPM - the manifest's
    AK made again as the endorsement primary it is (same template, same key)."""
    from ..modes.identity import Identity, ak_template
    from .tpm import RH_ENDORSEMENT, TpmError
    try:
        tpm.call("ReadPublic", handles=[handle])
        return handle, False
    except TpmError:
        if manifest_version != 1:
            raise
    public = Identity.from_manifest(manifest, 1).ak
    if public is None:
        raise ChannelError("tpm_evidence", f"no AK at {handle:#x} and the manifest names none")
    kind = "ecc" if public[:2] == b"\x00\x23" else "rsa"
    made, made_public = create_primary(tpm, ak_template(kind), RH_ENDORSEMENT)
    if made_public != public:
        tpm.flush(made)
        raise ChannelError("tpm_evidence", "the AK made from its template is not the one the "
                                           "manifest names")
    return made, True
