"""The ephemeral mode (the e-vTPM / coconut-svsm model): a TPM that keeps nothing, with its
endorsement key anchored to an SEV-SNP report.

At boot, before the first command is served:
* a new TPM in memory with fresh random seeds (a restart is a new TPM; nothing is written);
* the EKs (TCG templates L-1, L-2) persistent at 0x81010001 / 0x81010002 and the AK at
  0x81020000 (`identity.py`);
* two platform-created NV indices (Azure's vTPM uses the same pair for the same purpose):
  - REQUEST 0x01400002, 64 bytes, owner/auth read and write: the guest writes a nonce;
  - EVIDENCE 0x01400001, owner/auth read only: ctpm writes there, for every nonce written to
    REQUEST, a fresh report with REPORT_DATA = SHA-512(nonce || manifest v1), its certificate
    table, the manifest and the provider's name (layout in anchor.py);
  Through TPM commands, both can be written only with a policy session satisfied by
  PolicySigned with a P-256 key that lives in this process's memory (new every boot), and
  deleted only by NV_UndefineSpaceSpecial with that policy (TPMA_NV_POLICY_DELETE): guest
  root, even holding platformAuth, can neither replace nor delete the evidence. ctpm itself,
  the platform, writes EVIDENCE (and reads REQUEST) directly in its engine
  (`Tpm.platform_nv_write`), as firmware writes its own indices: no command, so no session or
  object slot of the guest's is taken and nothing lands in its audit. A verifier checks the
  report anyway (signature, REPORT_DATA).
* one boot report (for an all-zero nonce) is in EVIDENCE, so the first read works;
* then the TPM is powered off and on again, so that the client's TPM2_Startup is the first
  command of its boot (as with coconut-svsm, whose firmware sends Startup).

The SVSM mode uses the same backend behind the SVSM protocols (ctpm/svsm/).
"""
import hashlib
import logging
import struct

from ..backend import EngineBackend
from .anchor import Anchor, encode_evidence
from .identity import provision
from .tpmclient import RH_PLATFORM, TpmClient, b2, u16, u32

log = logging.getLogger("ctpm.modes")

EVIDENCE_INDEX = 0x01400001
REQUEST_INDEX = 0x01400002
MAX_EVIDENCE_INDEX = 8192               # room for a report, three certificates, the manifest
# TPM_PT_NV_BUFFER_MAX unless configured: tpm2-tss's largest, so that an attester reads the
# evidence (~7.5 KB) in 4 NV_Reads rather than 8; a client that reads the property (tpm2-tools,
# ctpm's attester) follows, one that assumes libtpms' 1024 still works (reads of 1024 are fine)
NV_BUFFER_MAX = 2048

# TPMA_NV bits
_POLICYWRITE, _AUTHWRITE, _OWNERWRITE = 1 << 3, 1 << 2, 1 << 1
_POLICY_DELETE, _OWNERREAD, _AUTHREAD = 1 << 10, 1 << 17, 1 << 18
_NO_DA, _PLATFORMCREATE = 1 << 25, 1 << 30
EVIDENCE_ATTRS = _POLICYWRITE | _POLICY_DELETE | _OWNERREAD | _AUTHREAD | _NO_DA | \
    _PLATFORMCREATE
REQUEST_ATTRS = _POLICYWRITE | _OWNERWRITE | _AUTHWRITE | _POLICY_DELETE | _OWNERREAD | \
    _AUTHREAD | _NO_DA | _PLATFORMCREATE

_CC_NV_WRITE = (0x137).to_bytes(4, "big")
_REQUEST = REQUEST_INDEX.to_bytes(4, "big")
_OK = bytes(4)


class PlatformSigner:
    """The key whose PolicySigned is the authPolicy of the two indices: only this process,
    the platform, could satisfy it (`signature`), so no client can write or delete them.
    Its private half never leaves memory."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec
        self._key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        # TPMT_PUBLIC: ECC, SHA-256, sign|userWithAuth, no policy, ECDSA-SHA256 on P-256
        self.public = (struct.pack(">HHI", 0x23, 0x0B, 0x00040040) + b2(b"")
                       + struct.pack(">HHHHH", 0x10, 0x18, 0x0B, 0x03, 0x10)
                       + b2(numbers.x.to_bytes(32, "big")) + b2(numbers.y.to_bytes(32, "big")))
        name = u16(0x0B) + hashlib.sha256(self.public).digest()
        # PolicySigned(this key, no policyRef), from an empty policy (Part 3 §23.3)
        digest = hashlib.sha256(bytes(32) + u32(0x160) + name).digest()
        self.policy = hashlib.sha256(digest).digest()

    def signature(self, nonce_tpm: bytes) -> bytes:
        """TPMT_SIGNATURE over aHash = SHA-256(nonceTPM || expiration 0)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        r, s = decode_dss_signature(self._key.sign(nonce_tpm + u32(0),
                                                   ec.ECDSA(hashes.SHA256())))
        return (struct.pack(">HH", 0x18, 0x0B) + b2(r.to_bytes(32, "big"))
                + b2(s.to_bytes(32, "big")))


class EphemeralBackend(EngineBackend):
    """The engine in memory, provisioned and anchored at boot (see the module docstring)."""

    mode = "ephemeral"

    @classmethod
    def build(cls, config, provider=None):
        from ..engine.config import EngineConfig
        from ..engine.tpm import Tpm
        from ..platform import Platform
        from ..state.store import VolatileStore

        if provider is None:
            from .report import open_report_provider
            provider = open_report_provider(config)
        engine_config = EngineConfig(max_command_size=config.max_command_size,
                                     max_objects=config.max_objects,
                                     max_sessions=config.max_sessions,
                                     max_persistent=config.max_persistent,
                                     max_nv_indices=config.max_nv_indices,
                                     nv_space=max(config.nv_space, 2 * MAX_EVIDENCE_INDEX),
                                     max_nv_index_size=MAX_EVIDENCE_INDEX,
                                     nv_buffer_max=config.nv_buffer_max or NV_BUFFER_MAX)
        tpm = Tpm.manufacture(Platform(store=VolatileStore()), config=engine_config)
        backend = cls(tpm, max_command_size=config.max_command_size)
        backend._boot(provider, ak_kind=config.ak)
        return backend

    def _boot(self, provider, *, ak_kind="ecc"):
        tpm = self._tpm
        tpm.power_on()
        client = TpmClient(tpm.execute)
        client.startup()
        identity = provision(client, ak_kind=ak_kind)
        self.anchor = Anchor(identity, provider)
        self.signer = PlatformSigner()
        nonce = bytes(64)
        first = self._evidence(nonce)
        size = min(MAX_EVIDENCE_INDEX, len(first) + 1024)
        client.nv_define(RH_PLATFORM, EVIDENCE_INDEX, EVIDENCE_ATTRS, size, self.signer.policy)
        client.nv_define(RH_PLATFORM, REQUEST_INDEX, REQUEST_ATTRS, 64, self.signer.policy)
        self.evidence_size = size
        tpm.platform_nv_write(EVIDENCE_INDEX, first.ljust(size, b"\0"))
        client.shutdown()
        tpm.power_off()
        tpm.power_on()          # the client's Startup is the first command of this boot
        self.reports = 1

    def _evidence(self, nonce: bytes) -> bytes:
        evidence, manifest = self.anchor.attest(nonce, 1)
        return encode_evidence(nonce, evidence, manifest, 1)

    # -- the report request ---------------------------------------------------------------

    @staticmethod
    def _is_request(command: bytes) -> bool:
        return command[6:10] == _CC_NV_WRITE and command[14:18] == _REQUEST

    def execute_inline(self, command: bytes, locality: int):
        if self._is_request(command):
            return None                 # answered by `execute`, after the new report
        return super().execute_inline(command, locality)

    async def execute(self, command: bytes, locality: int) -> bytes:
        response = await super().execute(command, locality)
        if response[6:10] == _OK and self._is_request(command):
            try:
                await self._refresh()
            except Exception:       # the guest's write stands; the old evidence stays
                log.exception("cannot refresh the evidence index")
        return response

    async def _refresh(self):
        import trio
        nonce = await self.run_exclusive(lambda tpm: tpm.platform_nv_read(REQUEST_INDEX))
        blob = await trio.to_thread.run_sync(self._evidence, nonce)
        if len(blob) > self.evidence_size:
            raise ValueError(f"evidence of {len(blob)} bytes does not fit the index "
                             f"({self.evidence_size})")
        await self.run_exclusive(lambda tpm: tpm.platform_nv_write(
            EVIDENCE_INDEX, blob.ljust(self.evidence_size, b"\0")))
        self.reports += 1

    # -- what an ephemeral TPM refuses ------------------------------------------------------

    async def get_state_blob(self, kind: int) -> bytes:
        raise PermissionError("an ephemeral TPM's state never leaves it (no migration)")

    async def set_state_blob(self, kind: int, data: bytes):
        raise PermissionError("an ephemeral TPM's state cannot be replaced from outside")

    def describe(self) -> dict:
        info = super().describe()
        info.update(mode=self.mode, state="memory (ephemeral)",
                    snp_provider=self.anchor.provider.name, reports=self.reports)
        return info


class SvsmBackend(EphemeralBackend):
    """The SVSM-resident vTPM: the same ephemeral, anchored TPM, reached through the SVSM
    vTPM protocol, its service attestation answered at VMPL 0 (ctpm/svsm/)."""

    mode = "svsm"
