"""The TPM: a synchronous, sans-I/O engine. `Tpm.execute(command, locality) -> response`.

One instance is one TPM. Transports call `execute` and the platform signals (power, NV,
cancel, _TPM_Hash_*); everything else is in the instance, nothing in modules.
"""
import struct

from ..errors import TpmError
from ..platform import Platform
from ..wire.commands import Auth
from ..wire.constants import TPM_ALG, TPM_CC, TPM_HT, TPM_RC, TPM_RH, TPM_ST, TPMA_OBJECT
from ..wire.nv import TPM_NT, nt_of
from .config import EngineConfig
from .dispatch import Dispatcher
from . import migration
from .subsystems import act, nv_indices
from .subsystems.hierarchy import hierarchy_auth
from .subsystems.pcr_banks import PCR_AUTH_GROUP, PCR_POLICY_GROUP
from .subsystems.state import TpmState

_HDR = struct.Struct(">HII")


def error_response(rc: int, tag: int = TPM_ST.NO_SESSIONS) -> bytes:
    """A 10-byte error response (Part 1 §18.2: errors carry no handles, parameters or sessions)."""
    return _HDR.pack(tag, 10, rc)


class Tpm:
    """One TPM 2.0 instance.

    Life cycle as on real hardware: `power_on()` (done by `manufacture`) runs _TPM_Init; the
    first command must then be TPM2_Startup. `power_off()` drops everything volatile.
    """

    def __init__(self, platform: Platform | None = None, config: EngineConfig | None = None,
                 *, seed: bytes | None = None):
        self.platform = platform if platform is not None else Platform()
        self.config = config if config is not None else EngineConfig()
        self.state = TpmState.load_or_manufacture(self.platform, self.config, seed=seed)
        self.dispatcher = Dispatcher(self)
        self.powered = False
        self.nv_available = True
        self.cancelled = False
        self.physical_presence = False   # the platform's PP signal (signal_physical_presence)
        self._blobs = {}                 # state blobs waiting for the next power-on
        self.power_on()

    @classmethod
    def manufacture(cls, platform=None, *, seed=None, config=None):
        """A TPM as it leaves the factory (or as it was, if the platform's store has an image).

        `seed` makes the primary seeds and the DRBG deterministic: INSECURE, for tests only.
        """
        return cls(platform, config, seed=seed)

    # -- the command interface -----------------------------------------------------------

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        """Run one command; always returns a well-formed response, never raises."""
        if not self.powered:
            return error_response(TPM_RC.FAILURE)
        return self.dispatcher.execute(command, locality)

    # -- platform signals (mssim platform port, swtpm control channel) -------------------

    def power_on(self):
        """Power on if off; runs _TPM_Init. A no-op while powered (as the reference simulator).
        State blobs set while off (`set_state_blob`) become the TPM's state here; a
        `migration.MigrationError` says why they could not."""
        if self.powered:
            return
        if self._blobs:
            blobs, self._blobs = self._blobs, {}
            migration.restore(self, blobs.get(migration.PERMANENT), blobs.get(migration.VOLATILE))
            return
        self.powered = True
        self.tpm_init()

    def get_state_blob(self, kind: int) -> bytes:
        """swtpm GET_STATEBLOB: see engine/migration.py."""
        return migration.get_blob(self, kind)

    def set_state_blob(self, kind: int, data: bytes):
        """swtpm SET_STATEBLOB: only while powered off (stopped); used at the next power-on."""
        if self.powered:
            raise migration.MigrationError("state blobs can only be set while the TPM is stopped")
        if kind not in migration.TYPES:
            raise migration.MigrationError(f"unknown state blob type {kind}")
        self._blobs[kind] = bytes(data)

    def power_off(self):
        self.powered = False
        self.physical_presence = False
        self.state.power_off()

    def signal_physical_presence(self, asserted: bool):
        """_plat__Signal_PhysicalPresenceOn/Off: the platform asserts (or stops asserting)
        that an operator is present; commands on the PP list authorized by platformAuth, and
        policies with PolicyPhysicalPresence, need it."""
        self.physical_presence = bool(asserted)

    def phys_pres_on(self):
        self.signal_physical_presence(True)

    def phys_pres_off(self):
        self.signal_physical_presence(False)

    def tpm_init(self):
        """_TPM_Init (Part 1 §12.2.2): a TPM Reset indication; Startup is required next."""
        self.state.tpm_init()

    def reset(self):
        """mssim RESET: _TPM_Init while powered."""
        if self.powered:
            self.tpm_init()

    def nv_on(self):
        self.nv_available = True

    def nv_off(self):
        self.nv_available = False

    def cancel_on(self):
        self.cancelled = True

    def cancel_off(self):
        self.cancelled = False

    @property
    def established(self) -> bool:
        """TPM_ACCESS.tpmEstablishment (swtpm GET_TPMESTABLISHED): set by a D-RTM event."""
        return self.state.established

    def reset_established(self, locality: int):
        """Clear tpmEstablished; only localities 3 and 4 may (PC Client PTP)."""
        if locality not in (3, 4):
            raise TpmError(TPM_RC.LOCALITY)
        self.state.established = False

    def hash_start(self, locality: int = 4):
        self.state.drtm_hash_start(locality)

    def hash_data(self, data: bytes):
        self.state.drtm_hash_data(data)

    def hash_end(self):
        self.state.drtm_hash_end()

    # -- the platform's own NV indices (firmware, or a mode's backend, not a command) --------

    def platform_nv_write(self, handle: int, data: bytes, offset: int = 0):
        """Write `data` at `offset` into an ordinary platform-created NV index as the platform
        that created it, as firmware writes its own indices: not a TPM command, so no
        authorization, no session or object slot taken from the client, nothing audited.
        The index's own rules hold (ordinary, not write-locked, the range, NV available) and
        what a client may do with it stays what its attributes and policy allow. Raises
        TpmError with the TPM_RC that refuses it."""
        index = self._platform_index(handle)
        a = index.attributes
        if nt_of(a) != TPM_NT.ORDINARY:
            raise TpmError(TPM_RC.ATTRIBUTES)
        if a & nv_indices.A.WRITELOCKED:
            raise TpmError(TPM_RC.NV_LOCKED)
        if offset > index.public["dataSize"]:
            raise TpmError(TPM_RC.NV_RANGE)
        refusal = nv_indices.range_refusal(index, offset, len(data))
        if refusal is not None:
            raise TpmError(refusal)
        if not a & nv_indices.A.ORDERLY and not self.nv_available:
            raise TpmError(TPM_RC.NV_UNAVAILABLE)
        nv_indices.write_data(self.state, index, offset, bytes(data))
        self.state.commit()

    def platform_nv_read(self, handle: int) -> bytes:
        """The whole content of a written platform-created NV index, read by the platform
        (see `platform_nv_write`)."""
        index = self._platform_index(handle)
        if not index.attributes & nv_indices.A.WRITTEN:
            raise TpmError(TPM_RC.NV_UNINITIALIZED)
        return index.data

    def _platform_index(self, handle: int):
        if not self.powered:
            raise TpmError(TPM_RC.FAILURE)
        index = nv_indices.get(self.state, handle)
        if index is None:
            raise TpmError(TPM_RC.HANDLE)
        if not index.attributes & nv_indices.A.PLATFORMCREATE:
            raise TpmError(TPM_RC.NV_AUTHORIZATION)
        return index

    def _object(self, handle: int):
        state = self.state
        return state.objects.get(handle) or state.persistent.get(handle)

    def entity_auth_value(self, handle: int) -> bytes:
        """authValue of an entity named in a handle area (Part 1 §19.6.5).

        Objects carry theirs in the sensitive area, hierarchies theirs in the state
        (HierarchyChangeAuth); PCRs of the authValue group share the one PCR_SetAuthValue
        gave (the others have none).
        """
        obj = self._object(handle)
        if obj is not None:
            return obj.auth_value
        if handle >> 24 == TPM_HT.NV_INDEX:
            index = nv_indices.peek(self.state, handle)
            return index.auth if index is not None else b""
        if handle >> 24 == TPM_HT.PCR:
            return self.state.pcr_auth if handle in PCR_AUTH_GROUP else b""
        return hierarchy_auth(self.state, handle) if handle >> 24 == TPM_HT.PERMANENT else b""

    def entity_name(self, handle: int) -> bytes:
        """Name of an entity (Part 1 §16): an object's Name, else the handle itself."""
        obj = self._object(handle)
        if obj is not None:
            return obj.name
        if handle >> 24 == TPM_HT.NV_INDEX:
            index = nv_indices.peek(self.state, handle)
            if index is not None:
                return index.name
        return handle.to_bytes(4, "big")

    def check_loaded(self, handle: int, index: int, code: int = 0):
        """Every handle in a handle area must name something present (Part 1 §18.4)."""
        kind = handle >> 24
        if kind == TPM_HT.PERMANENT and not self.state.hierarchy_enabled(handle):
            raise TpmError(TPM_RC.HIERARCHY, handle=index)
        if TPM_RH.ACT_0 <= handle <= TPM_RH.ACT_F and act.number(handle) is None:
            raise TpmError(TPM_RC.VALUE, handle=index)      # an ACT this TPM does not have
        if kind == TPM_HT.TRANSIENT and handle not in self.state.objects:
            raise TpmError(TPM_RC.REFERENCE_H0 + index - 1)
        if kind in (TPM_HT.HMAC_SESSION, TPM_HT.POLICY_SESSION):
            # Session handles name a slot; the slot's session must be of the handle's kind.
            slot = handle & 0xFFFFFF
            loaded = next((h for h in self.state.sessions if h & 0xFFFFFF == slot), None)
            if loaded is None:
                raise TpmError(TPM_RC.REFERENCE_H0 + index - 1)
            if loaded != handle:
                raise TpmError(TPM_RC.HANDLE, handle=index)
        if kind == TPM_HT.PERSISTENT:
            # ObjectLoadEvict: the owner's range needs shEnable, the platform's phEnable, an
            # endorsement object ehEnable too (except to EvictControl it away)
            obj = self.state.persistent.get(handle)
            if obj is None or not self.state.hierarchy_enabled(
                    TPM_RH.PLATFORM if handle >= 0x81800000 else TPM_RH.OWNER):
                raise TpmError(TPM_RC.HANDLE, handle=index)
            if (obj.hierarchy == TPM_RH.ENDORSEMENT and not self.state.eh_enable
                    and code != TPM_CC.EvictControl):
                raise TpmError(TPM_RC.HANDLE, handle=index)
        if kind == TPM_HT.NV_INDEX and not nv_indices.accessible(self.state, handle):
            raise TpmError(TPM_RC.HANDLE, handle=index)

    def auth_value_refusal(self, handle: int, role, code: int = 0):
        """Why a password or HMAC may not authorize this entity in this role, or None
        (Part 1 §19.7, the reference's IsPolicySessionRequired / IsAuthValueAvailable).

        The DUP role, and the ADMIN role of an object with adminWithPolicy, need a policy
        session (TPM_RC_AUTH_TYPE); the USER role of an object without userWithAuth, and an
        object loaded without its private part, have no authValue (TPM_RC_AUTH_UNAVAILABLE).
        """
        obj = self._object(handle)
        if role == Auth.DUP:
            return TPM_RC.AUTH_TYPE
        if obj is None:
            # the ADMIN role of a permanent handle or an NV index always needs a policy
            if role == Auth.ADMIN and handle >> 24 in (TPM_HT.PERMANENT, TPM_HT.NV_INDEX):
                return TPM_RC.AUTH_TYPE
            if handle >> 24 == TPM_HT.NV_INDEX:
                index = nv_indices.peek(self.state, handle)
                if index is not None:       # AUTHREAD / AUTHWRITE
                    return nv_indices.auth_value_refusal(index, code)
            # a PCR of the policy group, once PCR_SetAuthPolicy gave it a policy, needs a
            # policy session (IsPolicySessionRequired)
            if (handle >> 24 == TPM_HT.PCR and handle in PCR_POLICY_GROUP
                    and self.state.pcr_policy()[0] != TPM_ALG.NULL):
                return TPM_RC.AUTH_TYPE
            return None
        if role == Auth.ADMIN and obj.attributes & TPMA_OBJECT.ADMINWITHPOLICY:
            return TPM_RC.AUTH_TYPE
        if obj.sensitive is None and obj.public.type != TPM_ALG.NULL:
            return TPM_RC.AUTH_UNAVAILABLE
        if role == Auth.USER and not obj.attributes & TPMA_OBJECT.USERWITHAUTH:
            return TPM_RC.AUTH_UNAVAILABLE
        return None

    def auth_value_used(self, handle: int, ok: bool):
        """An authorization that used this entity's authValue succeeded or failed: a PIN
        pass or PIN fail index counts it (Part 1 §37.2.5)."""
        if handle >> 24 == TPM_HT.NV_INDEX:
            nv_indices.count_pin_use(self.state, handle, ok)

    def is_da_exempt(self, handle: int) -> bool:
        """Objects with noDA, PCRs and every permanent handle but TPM_RH_LOCKOUT are outside
        dictionary-attack protection."""
        obj = self._object(handle)
        if obj is not None:
            return bool(obj.attributes & TPMA_OBJECT.NODA)
        if handle >> 24 == TPM_HT.NV_INDEX:
            index = nv_indices.peek(self.state, handle)
            return index is None or bool(index.attributes & nv_indices.A.NO_DA)
        return handle != TPM_RH.LOCKOUT

    @property
    def started(self) -> bool:
        return self.state.started

    def save_state(self):
        """Write the NV image now (swtpm STORE_VOLATILE, clean shutdown of the daemon)."""
        self.state.commit(force=True)
