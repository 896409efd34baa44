"""Composite evidence: one JSON document, fresh for one verifier nonce N, that proves the
VM's launch (SNP report) and what ran after (TPM quote, PCRs, event logs) and binds them:

* SNP report:  REPORT_DATA    = SHA-512(N || manifest)   (the SVSM rule)
* TPM quote:   qualifyingData = SHA-256(N), signed by the AK the manifest names
  (so the report vouches for the AK, and the AK for the PCRs).

The document is an IETF RATS CMW collection (draft-ietf-rats-msg-wrap): a JSON object whose
members are CMWs in record form `[media type, base64url(bytes)]`, plus `__cmwc_t` naming the
collection type. Members carry the exact bytes the TPM and the firmware produced (the verifier
checks signatures over them, never over a re-encoding). docs/attestation.md has the schema;
`ctpm/attest/evidence.schema.json` is the JSON Schema.

`collect()` is the attester: it talks to any TPM through a tpm2-tss TCTI (tpm2-pytss); the
SNP part comes from ctpm's evidence NV indices (ephemeral mode) or is given by the caller.
"""
import base64
import hashlib
import json

COLLECTION_TYPE = "tag:ctpm.dev,2026:composite-evidence/v1"
MEDIA = {
    "meta": "application/vnd.ctpm.evidence-meta+json",
    "snp-report": "application/vnd.amd.sev-snp.attestation-report",
    "snp-certs": "application/vnd.amd.sev-snp.cert-table",
    "manifest": "application/vnd.ctpm.manifest",
    "tpm-quote": "application/vnd.tcg.tpms-attest",
    "tpm-signature": "application/vnd.tcg.tpmt-signature",
    "pcrs": "application/vnd.ctpm.pcr-values+json",
    "event-log": "application/vnd.tcg.pcclient-event-log",
    "ima-log": "text/plain; charset=utf-8",
    # the trusted channel (docs/channel.md): K's TPMT_PUBLIC, TPM2_Certify of K by the AK
    "channel-key": "application/vnd.tcg.tpmt-public",
    "channel-key-certify": "application/vnd.tcg.tpms-attest",
    "channel-key-signature": "application/vnd.tcg.tpmt-signature",
    # manifest v0 (names only the EK): the AK and its TPM2_Certify by a key the verifier
    # wrapped to the EK (ctpm.attest.akcert)
    "ak-public": "application/vnd.tcg.tpmt-public",
    "ak-certify": "application/vnd.tcg.tpms-attest",
    "ak-certify-signature": "application/vnd.tcg.tpmt-signature",
}
CHANNEL_MEMBERS = ("channel-key", "channel-key-certify", "channel-key-signature")
REQUIRED = ("meta", "snp-report", "manifest", "tpm-quote", "tpm-signature", "pcrs")
DEFAULT_PCRS = "sha256:0,1,2,3,4,5,6,7"
NV_REQUEST, NV_EVIDENCE, AK_HANDLE = 0x01400002, 0x01400001, 0x81020000


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def build(*, report: bytes, cert_table: bytes | None, manifest: bytes, manifest_version: int,
          provider: str, quote: bytes, signature: bytes, pcrs: dict, selection: str,
          event_log: bytes | None = None, ima_log: bytes | None = None,
          instance_uuid: str | None = None, channel_key: tuple | None = None,
          ak_certification: tuple | None = None) -> dict:
    """The evidence document. `pcrs`: {bank: {pcr: value bytes}}; `channel_key`: (K's
    TPMT_PUBLIC, TPMS_ATTEST of TPM2_Certify(K) by the AK, its TPMT_SIGNATURE);
    `ak_certification`: (AK TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE) of
    ctpm.attest.akcert (manifest v0)."""
    meta = {"version": 1, "manifest_version": manifest_version, "provider": provider,
            "pcr_selection": selection, "nonce_binding": {
                "snp-report": "REPORT_DATA = SHA-512(nonce || manifest)",
                "tpm-quote": "extraData = SHA-256(nonce)"}}
    if instance_uuid:
        meta["instance_uuid"] = instance_uuid
    pcr_json = {bank: {str(i): v.hex() for i, v in sorted(values.items())}
                for bank, values in pcrs.items()}
    parts = {"meta": json.dumps(meta, sort_keys=True).encode(), "snp-report": report,
             "manifest": manifest, "tpm-quote": quote, "tpm-signature": signature,
             "pcrs": json.dumps(pcr_json, sort_keys=True).encode()}
    if cert_table:
        parts["snp-certs"] = cert_table
    if event_log:
        parts["event-log"] = event_log
    if ima_log:
        parts["ima-log"] = ima_log
    if channel_key:
        meta["nonce_binding"]["channel-key-certify"] = "extraData = SHA-256(nonce)"
        parts["meta"] = json.dumps(meta, sort_keys=True).encode()
        parts.update(zip(CHANNEL_MEMBERS, channel_key))
    if ak_certification:
        parts["ak-public"], parts["ak-certify"], parts["ak-certify-signature"] = \
            ak_certification
    doc = {"__cmwc_t": COLLECTION_TYPE}
    doc.update({label: [MEDIA[label], b64u(data)] for label, data in parts.items()})
    return doc


def parts(doc) -> dict:
    """label -> bytes of an evidence document; ValueError naming what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("evidence is not a JSON object")
    if doc.get("__cmwc_t") != COLLECTION_TYPE:
        raise ValueError(f"__cmwc_t is not {COLLECTION_TYPE!r}")
    out = {}
    for label, cmw in doc.items():
        if label == "__cmwc_t":
            continue
        if label not in MEDIA:
            raise ValueError(f"unknown member {label!r}")
        if not (isinstance(cmw, list) and len(cmw) in (2, 3) and cmw[0] == MEDIA[label]):
            raise ValueError(f"member {label!r} is not the CMW [{MEDIA[label]!r}, base64url]")
        try:
            out[label] = unb64u(cmw[1])
        except (ValueError, TypeError):
            raise ValueError(f"member {label!r}: value is not base64url") from None
    channel = [label for label in CHANNEL_MEMBERS if label in out]
    if channel and len(channel) != len(CHANNEL_MEMBERS):
        raise ValueError(f"the channel key needs all of {', '.join(CHANNEL_MEMBERS)}")
    missing = [label for label in REQUIRED if label not in out]
    if missing:
        raise ValueError(f"missing members: {', '.join(missing)}")
    return out


def qualifying_data(nonce: bytes) -> bytes:
    return hashlib.sha256(bytes(nonce)).digest()


# --- the attester ------------------------------------------------------------------------------

def collect(tcti: str, nonce: bytes, *, pcrs: str = DEFAULT_PCRS,
            event_log: bytes | None = None, ima_log: bytes | None = None,
            instance_uuid: str | None = None, snp=None, startup: bool = False,
            ak_certify: dict | None = None) -> dict:
    """Evidence from the TPM behind `tcti` (tpm2-tools' TCTI string) for `nonce` (64 bytes).

    The SNP part: `snp` = (report, cert_table, manifest, manifest_version, provider) when the
    caller got it elsewhere (e.g. the SVSM attestation call); otherwise it is requested from
    ctpm's NV indices (write N to 0x01400002, read 0x01400001). The quote is by the AK at
    0x81020000 over `pcrs` (tpm2-tools form, e.g. "sha256:0,1,2,3,4,5,6,7").
    `ak_certify`: the challenge's `ak_certify` object (manifest v0): the AK is certified by
    the key the verifier wrapped to the EK (ctpm.attest.akcert) in the same session."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import TPM2_ALG, TPM2_SU
    from tpm2_pytss.types import TPM2B_DATA, TPML_PCR_SELECTION, TPMT_SIG_SCHEME

    from ..modes.anchor import decode_evidence
    from .tpm import format_selection, parse_selection

    if len(nonce) != 64:
        raise ValueError(f"the nonce is 64 bytes, got {len(nonce)}")
    selection = format_selection(parse_selection(pcrs))
    esapi = ESAPI(TCTILdr.parse(tcti))
    try:
        if startup:
            esapi.startup(TPM2_SU.CLEAR)
        if snp is None:
            ev = decode_evidence(collect_snp_only(esapi, nonce))
            if ev.nonce != nonce:
                raise ValueError("the evidence index answered another nonce")
            snp = (ev.report, ev.cert_table, ev.manifest, ev.manifest_version, ev.provider)
        # the persistent AK is quoted by its handle (`quote_pcrs`); ESAPI's ESYS_TR is needed
        # only to make the AK again or to certify it
        quoted = None if ak_certify is not None else quote_pcrs(esapi, nonce, selection)
        ak = made = None
        if quoted is None:
            ak, made = _persistent_ak(esapi), False
            if ak is None:
                ak, made = _ak(esapi, snp[2], snp[3])
            q, s = esapi.quote(ak, TPML_PCR_SELECTION.parse(selection),
                               TPM2B_DATA(qualifying_data(nonce)),
                               TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
            quoted = bytes(q.attestationData), s.marshal(), read_pcrs(esapi, selection)
        quote_bytes, sig_bytes, values = quoted
        certification = None
        if ak_certify is not None:
            from .akcert import certify_ak
            certification = certify_ak(esapi, ak_certify, nonce, ak=ak)
        report, cert_table, manifest, manifest_version, provider = snp
        if made:
            esapi.flush_context(ak)
    finally:
        esapi.close()
    return build(report=report, cert_table=cert_table, manifest=manifest,
                 manifest_version=manifest_version, provider=provider, quote=quote_bytes,
                 signature=sig_bytes, pcrs=values, selection=selection, event_log=event_log,
                 ima_log=ima_log, instance_uuid=instance_uuid, ak_certification=certification)


def _persistent_ak(esapi):
    from tpm2_pytss import TSS2_Exception
    try:
        return esapi.tr_from_tpmpublic(AK_HANDLE)
    except TSS2_Exception:
        return None


def _ak(esapi, manifest: bytes, manifest_version: int) -> tuple:
    """(ESYS_TR of the AK, True) where there is no persistent AK, as in the passthrough mode
    whose anchor names a primary it does not keep: the AK the manifest v1 names, made again
    from its template (CreatePrimary is deterministic)."""
    if manifest_version != 1:
        raise LookupError("no AK at 0x81020000 and manifest v0 names none")
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

    from ..modes.identity import Identity, ak_template
    named = Identity.from_manifest(manifest, 1).ak
    if named is None:
        raise LookupError("no AK at 0x81020000 and the manifest names none")
    template = ak_template("ecc" if named[:2] == b"\x00\x23" else "rsa")
    public = TPM2B_PUBLIC.unmarshal(len(template).to_bytes(2, "big") + template)[0]
    handle, out, _, _, _ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), public,
                                                primary_handle=ESYS_TR.ENDORSEMENT)
    if bytes(out.publicArea.marshal()) != named:
        esapi.flush_context(handle)
        raise LookupError("the AK made from the template is not the AK the manifest names")
    return handle, True


def collect_snp_only(esapi, nonce: bytes) -> bytes:
    """Ask ctpm for a report for `nonce` through its NV indices; the evidence index's bytes.

    Plain commands with password sessions on the ESAPI's TCTI (`TpmClient`): ESAPI would
    first read each index's public area to name it (a round trip each), which only HMAC and
    encrypting sessions need. The index is read in pieces of the TPM's TPM_PT_NV_BUFFER_MAX
    (asked, not assumed), up to where its header says the evidence ends."""
    from ..modes.tpmclient import (RH_OWNER, TPM_PT_NV_BUFFER_MAX, TctiTransport, TpmClient,
                                   TpmCommandError)
    tpm = TpmClient(TctiTransport(esapi.tcti))
    try:
        tpm.nv_write(RH_OWNER, NV_REQUEST, nonce)
    except TpmCommandError as e:
        if e.no_such_handle:                                # no such index
            raise LookupError("this TPM has no report request index 0x01400002: it is not a "
                              "ctpm in the ephemeral mode (a standard-mode TPM cannot be "
                              "anchored; in the SVSM mode give --svsm)") from None
        raise
    chunk = tpm.tpm_property(TPM_PT_NV_BUFFER_MAX)
    if not chunk:
        raise ValueError("the TPM reports no TPM_PT_NV_BUFFER_MAX")
    chunk = min(chunk, 2048)    # tpm2-tss's TPM2_MAX_NV_BUFFER_SIZE: no TPM may send more
    try:        # ctpm's index is always larger than one read: its size is asked only if not
        blob, size = tpm.nv_read(RH_OWNER, NV_EVIDENCE, chunk), None
    except TpmCommandError:
        size = tpm.nv_data_size(NV_EVIDENCE)
        blob = tpm.nv_read(RH_OWNER, NV_EVIDENCE, min(chunk, size))
    # the header's lengths say where the evidence ends: the padding after it is not read
    want = size
    if len(blob) >= 28 and blob[:8] == b"CTPMEVID":
        import struct
        want = 28 + sum(struct.unpack(">HHIII", blob[12:28]))
        want = want if size is None else min(size, want)
    elif size is None:
        size = want = tpm.nv_data_size(NV_EVIDENCE)
    return blob[:want] + b"".join(tpm.nv_read(RH_OWNER, NV_EVIDENCE, min(chunk, want - off),
                                              off)
                                  for off in range(len(blob), want, chunk))


def quote_pcrs(esapi, nonce: bytes, selection: str, ak: int = AK_HANDLE):
    """(TPMS_ATTEST, TPMT_SIGNATURE, PCR values) of a quote for `nonce` by the persistent AK
    at `ak` over `selection`, with plain commands on the ESAPI's TCTI (an ESYS_TR would cost
    a ReadPublic first); None if the TPM refuses the quote (no AK there, as in the passthrough
    mode, or a guard in front): the caller's ESAPI path then makes the AK or says why not."""
    from ..modes.tpmclient import TctiTransport, TpmClient, TpmCommandError
    from .tpm import parse_selection, pcr_selection
    tpm = TpmClient(TctiTransport(esapi.tcti))
    try:
        quote, signature = tpm.quote(ak, qualifying_data(nonce),
                                     pcr_selection(parse_selection(selection)))
    except TpmCommandError:
        return None
    return quote, signature, read_pcrs(esapi, selection)


def read_pcrs(esapi, selection: str) -> dict:
    """{bank: {pcr: value}} for a tpm2-tools selection (PCR_Read takes 8 at a time), with
    plain commands on the ESAPI's TCTI."""
    from ..modes.tpmclient import TctiTransport, TpmClient
    from .tpm import parse_selection, pcr_selection
    tpm = TpmClient(TctiTransport(esapi.tcti))
    values = {}
    for bank, indices in parse_selection(selection):
        values[bank] = {}
        for i in range(0, len(indices), 8):
            chunk = indices[i:i + 8]
            for pcr, digest in zip(chunk, tpm.pcr_read(pcr_selection(((bank, chunk),)))):
                values[bank][pcr] = digest
    return values
