"""The TEE's side of mutual attestation: an SNP report whose REPORT_DATA binds a fresh P-256
key Q_T and the verifier's nonce, in the shape of Trustee's KBS `Attestation` payload
(`tee-pubkey` as a JWK, `tee-evidence`; REPORT_DATA = SHA-384(runtime data) || 0^16, the
runtime data being the key-sorted compact JSON of {"nonce", "tee-pubkey"}), so the same TEE
code can talk to a KBS and to ctpm's verifier.

`verify_tee_evidence` is the verifier's side; its checks (names in docs/channel.md):
`tee_format`, every SNP check of ctpm.snp.verify (REPORT_DATA as `report_data`), `tee_key`.
"""
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import ec

from ..attest.evidence import b64u, unb64u
from ..snp.errors import SnpError
from . import protocol as P

CHECKS = ("tee_format", "<ctpm.snp.verify.CHECKS>", "tee_key")


class TeeError(SnpError):
    """TEE evidence refused; `check` names the rule."""


class TeeKey:
    """Q_T: the TEE's ephemeral key for one channel (never leaves the TEE's memory)."""

    def __init__(self, private: ec.EllipticCurvePrivateKey | None = None):
        self.private = private or ec.generate_private_key(ec.SECP256R1())
        self.jwk = P.tee_jwk(self.private.public_key())


def tee_evidence(provider, nonce_hex: str, key: TeeKey, *, vmpl: int | None = None) -> dict:
    """The Attestation payload for the verifier's nonce (as the challenge gave it, hex)."""
    report_data = P.tee_report_data(nonce_hex, key.jwk)
    ev = provider.report(report_data, vmpl=vmpl)
    evidence = {"report": b64u(ev.report), "provider": ev.provider}
    if ev.cert_table:
        evidence["cert_table"] = b64u(ev.cert_table)
    return {"tee-pubkey": key.jwk, "tee-evidence": evidence}


@dataclass(frozen=True)
class TeeAppraisal:
    snp: object                 # ctpm.snp.verify.Verified
    jwk: dict
    provider: str

    def claims(self, policy_id: str) -> dict:
        s = self.snp
        return {"policy_id": policy_id, "instance_uuid": None,
                "confirmed_key": {k: self.jwk[k] for k in ("kty", "crv", "x", "y")},
                "tee": {"product": s.product.value, "root": s.root, "provider": self.provider,
                        "vmpl": s.vmpl, "measurement": s.measurement.hex(),
                        "host_data": s.host_data.hex(),
                        "reported_tcb": s.reported_tcb.components(),
                        "report_version": s.report.version, "policy": f"{s.report.policy:#x}",
                        "signing_key": s.signing_key}}


def verify_tee_evidence(body, nonce_hex: str, *, snp_policy=None, trust=None,
                        verifier=None) -> TeeAppraisal:
    """Check a TEE's Attestation payload for the nonce (hex, as issued)."""
    from ..snp.verify import Policy, Verifier
    try:
        if not isinstance(body, dict):
            raise ValueError("the attestation is not a JSON object")
        jwk, evidence = body.get("tee-pubkey"), body.get("tee-evidence")
        if not isinstance(evidence, dict):
            raise ValueError("tee-evidence is not an object")
        report = unb64u(evidence.get("report"))
        table = unb64u(evidence["cert_table"]) if evidence.get("cert_table") else None
        provider = str(evidence.get("provider", ""))[:64]
    except (ValueError, TypeError) as e:
        raise TeeError("tee_format", str(e)) from None
    try:
        P.jwk_point(jwk)
    except ValueError as e:
        raise TeeError("tee_key", f"tee-pubkey: {e}") from None
    if jwk.get("alg", P.TEE_KEY_ALG) != P.TEE_KEY_ALG:
        raise TeeError("tee_key", f"tee-pubkey alg {jwk.get('alg')!r} is not "
                                  f"{P.TEE_KEY_ALG}")
    expected = P.tee_report_data(nonce_hex, jwk)
    policy = replace(snp_policy or Policy(), report_data=expected)
    verifier = verifier or Verifier(trust)
    verified = verifier.verify(report, cert_table=table, policy=policy)
    return TeeAppraisal(snp=verified, jwk=dict(jwk), provider=provider)
