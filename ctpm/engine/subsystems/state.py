"""Everything one TPM remembers: the NV image (seeds, counters, clock, saved state) and RAM.

Part 1 §36-37 sorts TPM state by when it is reset; the attribute names below follow it:
`nv` survives everything (persistent data, orderly data, the state saved by
Shutdown(STATE)); the rest is volatile and rebuilt by `tpm_init` and `startup`.
"""
import hashlib
import json

from ...crypto import hashes
from ...errors import TpmError
from ...state.store import StoreError
from ...wire.constants import TPM_ALG, TPM_HT, TPM_RC, TPM_RH, TPM_SE, TPM_SU
from ...wire.structures import HASH_SIZES, IMPLEMENTATION_PCR
from . import act, da, ecdaa
from .contexts import max_active_sessions, new_bookkeeping
from .drbg import HmacDrbg
from .pcr_banks import PCR_ATTRIBUTES, PCR_NO_INCREMENT, pcr_allocation
from .persistent import from_nv

NV_FORMAT = "ctpm-nv"
NV_VERSION = 1
SEED_SIZE = 64
PROOF_SIZE = 64


def _h(b):
    return b.hex()


def _b(s):
    return bytes.fromhex(s)


class TpmState:
    """State of one TPM. Handlers read and change it; `commit` writes the NV image."""

    def __init__(self, platform, config, nv: dict, *, fixed_seed: bytes | None = None):
        self.platform = platform
        self.config = config
        self.nv = nv
        self.fixed_seed = fixed_seed
        self._stored_blob = None
        self.dirty = False
        self.started = False
        self.established = nv.get("established", False)
        self.drbg = None
        self.drtm = None
        self.init_ms = platform.now_ms()
        self.clock_at_init = self._clock_stored = nv["clock"]
        self.objects = {}
        self.primary_cache = {}       # engine.object.primary_material's recent keys
        self.nv_public_cache = {}     # nv_indices.get: parsed TPMS_NV_PUBLIC by hex
        self.nv_peek_cache = {}       # nv_indices.peek: read-only indices by handle
        self.persistent = {int(h, 16): from_nv(e, int(h, 16))
                           for h, e in nv.get("persistent", {}).items()}

    # -- manufacture / load -----------------------------------------------------------------

    @classmethod
    def load_or_manufacture(cls, platform, config, *, seed=None):
        load_nv = getattr(platform.store, "load_nv", None)    # a store that keeps the dict
        blob = load_nv() if load_nv is not None else platform.store.load()
        if blob is None:
            state = cls(platform, config, cls._manufacture(platform, config, seed), fixed_seed=seed)
            state.commit(force=True)
            return state
        if load_nv is not None:
            nv = blob
            blob = None
            if nv.get("format") != NV_FORMAT or nv.get("version") != NV_VERSION:
                raise StoreError(f"TPM state in {platform.store.describe()} has an unknown "
                                 f"format/version")
        else:
            nv = cls.decode_image(blob, platform.store.describe())
        fixed = _b(nv["fixed_seed"]) if nv.get("fixed_seed") else None
        state = cls(platform, config, nv, fixed_seed=fixed)
        state._stored_blob = blob
        return state

    @staticmethod
    def _manufacture(platform, config, seed):
        if seed is not None:
            def material(label):
                return hashlib.sha512(b"ctpm INSECURE fixed seed\0" + label + b"\0" + seed).digest()
        else:
            def material(label):
                return platform.entropy(64)
        return {
            "format": NV_FORMAT,
            "version": NV_VERSION,
            "fixed_seed": _h(seed) if seed is not None else None,
            "eps": _h(material(b"EPS")), "sps": _h(material(b"SPS")), "pps": _h(material(b"PPS")),
            "eh_proof": _h(material(b"ehProof")), "sh_proof": _h(material(b"shProof")),
            "ph_proof": _h(material(b"phProof")),
            "clock": 0,
            "reset_count": 0,
            "total_reset_count": 0,
            # None (disorderly), "CLEAR" or "STATE"; a TPM fresh from the factory counts as
            # shut down in order (as libtpms), so its first Startup reports a safe clock.
            "orderly": "CLEAR",
            "saved": None,            # what Shutdown(STATE) keeps for the next Startup
            "pcr_allocated": [int(a) for a in config.pcr_banks],
            "established": False,
        }

    @staticmethod
    def decode_image(blob, where):
        """The NV dict of an image `image()` made; StoreError (naming `where`) if damaged."""
        try:
            outer = json.loads(blob)
            body = outer["body"]
            if hashlib.sha256(body.encode()).hexdigest() != outer["sha256"]:
                raise ValueError("checksum mismatch")
            nv = json.loads(body)
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"TPM state in {where} is corrupt ({e})") from None
        if nv.get("format") != NV_FORMAT or nv.get("version") != NV_VERSION:
            raise StoreError(f"TPM state in {where} has an unknown format/version")
        return nv

    def commit(self, force=False):
        """Write the NV image if it changed (called by the dispatcher after each command)."""
        if not (self.dirty or force):
            return
        self.dirty = False
        save_nv = getattr(self.platform.store, "save_nv", None)
        if save_nv is not None:     # the store records what changed (ctpm/state/journal.py)
            self.nv["clock"] = self.clock()
            self.nv["established"] = self.established
            self._clock_stored = self.nv["clock"]
            save_nv(self.nv)
            return
        blob = self.image()
        self._clock_stored = self.nv["clock"]
        if blob != self._stored_blob:
            self.platform.store.save(blob)
            self._stored_blob = blob

    def image(self) -> bytes:
        """The NV image as the store keeps it (checksummed JSON), with the clock of now."""
        self.nv["clock"] = self.clock()
        self.nv["established"] = self.established
        body = json.dumps(self.nv, sort_keys=True)
        return json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(),
                           "body": body}).encode()

    # -- power and initialization ------------------------------------------------------------

    def tpm_init(self):
        """_TPM_Init: volatile state is gone; the clock runs on from its stored value."""
        self.started = False
        self.init_ms = self.platform.now_ms()
        self.clock_at_init = self.nv["clock"]
        self._clock_stored = self.clock_at_init
        self.safe = self.orderly_startup = False
        self.platform_auth = b""
        self.platform_policy = (TPM_ALG.NULL, b"")   # SetPrimaryPolicy(PLATFORM): state-clear
        # TPMA_STARTUP_CLEAR enables (HierarchyControl): phEnable is SET by every Startup, the
        # others by every Startup but Resume
        self.ph_enable = self.sh_enable = self.eh_enable = self.ph_enable_nv = True
        self.pcrs = {}
        self.pcr_counter = 0
        self.pcr_auth = b""           # gc.pcrAuthValues (state-clear): PCR_SetAuthValue
        self.pcr_reconfig = False     # g_pcrReConfig: PCR_Allocate ran since Startup
        self.clock_adjust = 0         # ClockRateAdjust: accepted and recorded, not applied
        self.restart_count = 0
        self.drtm = None
        self.sessions = {}            # loaded sessions: handle -> sessions.Session
        self.exclusive_audit_session = None   # the reference's g_exclusiveAuditSession
        self.command_audit_digest = b""       # gr.commandAuditDigest (engine/subsystems/audit.py)
        self.objects = {}             # transient objects: handle -> objects.Object
        self.nv_ram = {}              # orderly NV indices (engine/subsystems/nv_ram.py), from Startup
        act.init(self)                # the countdown timers (engine/subsystems/act.py)
        if self.fixed_seed is not None:
            self.drbg = HmacDrbg(hashlib.sha512(b"ctpm INSECURE drbg\0" + self.fixed_seed).digest(),
                                 self.nv["reset_count"].to_bytes(4, "big"))
        else:
            self.drbg = HmacDrbg(self.platform.entropy(48), b"ctpm drbg")

    def power_off(self):
        """Power lost: nothing is written; a disorderly shutdown unless Shutdown came first."""
        self.started = False
        act.power_off(self)

    # -- clock -------------------------------------------------------------------------------

    def time(self) -> int:
        """Milliseconds since _TPM_Init (TPMS_TIME_INFO.time)."""
        return self.platform.now_ms() - self.init_ms

    def clock(self) -> int:
        """Milliseconds the TPM has been powered, over its lifetime (TPMS_CLOCK_INFO.clock)."""
        return self.clock_at_init + self.time()

    def reset_clock(self):
        """TPM2_Clear starts the clock over at 0 (and calls it safe)."""
        self.clock_at_init = -self.time()
        self.nv["clock"] = self._clock_stored = 0
        self.safe = True
        self.dirty = True

    def set_clock(self, new_time: int):
        """TPM2_ClockSet: Clock jumps forward to new_time (checked by the caller); written
        to NV at once, so the clock is safe."""
        self.clock_at_init += new_time - self.clock()
        self.safe = True
        self.dirty = True

    def tick(self):
        """Persist the clock now and then, as a TPM updates its NV clock (Part 1 §36.6)."""
        if self.clock() - self._clock_stored >= self.config.clock_update_interval_ms:
            self.dirty = True
            self.safe = True

    # -- startup / shutdown (Part 3 §9.3, §9.4) -----------------------------------------------

    def startup(self, startup_type, locality):
        if locality not in (0, 3):
            raise TpmError(TPM_RC.LOCALITY)
        nv = self.nv
        prev = nv["orderly"]
        saved = nv["saved"]
        if startup_type == TPM_SU.STATE:
            if prev != "STATE" or saved is None:
                raise TpmError(TPM_RC.VALUE, param=1)
            if saved["locality3"] != (locality == 3):
                raise TpmError(TPM_RC.LOCALITY)
            kind = "resume"
        elif prev == "STATE" and saved is not None:
            kind = "restart"
        else:
            kind = "reset"
        self.safe = self.orderly_startup = prev is not None
        da.startup(self, prev)
        if kind == "reset":
            if nv.get("pcr_pending") is not None:   # PCR_Allocate takes effect now
                nv["pcr_allocated"] = nv["pcr_pending"]
                nv["pcr_pending"] = None
            nv["reset_count"] += 1
            nv["total_reset_count"] += 1
            self.restart_count = 0
            self.pcr_counter = 0
            self.null_proof = self.drbg.generate(PROOF_SIZE)
            self.null_seed = self.drbg.generate(SEED_SIZE)
            self.contexts = new_bookkeeping()
            self.command_audit_digest = b""     # CommandAuditStartup: a new digest
        else:
            self.restart_count = saved["restart_count"] + 1
            self.pcr_counter = saved["pcr_counter"]
            self.null_proof = _b(saved["null_proof"])
            self.null_seed = _b(saved["null_seed"])
            # saved contexts (engine/subsystems/contexts.py) live on; clearCount counts TPM Restarts
            self.contexts = json.loads(json.dumps(saved.get("contexts") or new_bookkeeping()))
            self.contexts["clear_count"] += kind == "restart"
            self.command_audit_digest = _b(saved.get("command_audit_digest", ""))
            ecdaa.restore(self, saved.get("ecdaa_commit"))
        self._init_pcrs(locality, saved["pcrs"] if kind == "resume" else None)
        # platformAuth is state-clear data: kept by Resume only (Part 1 §13.3)
        self.platform_auth = _b(saved.get("platform_auth", "")) if kind == "resume" else b""
        # PCR authValues too (PCR_ClearAuth on every Startup but Resume)
        self.pcr_auth = _b(saved.get("pcr_auth", "")) if kind == "resume" else b""
        self.pcr_reconfig = False
        self.ph_enable = True
        if kind == "resume":
            alg, digest = saved.get("platform_policy", (int(TPM_ALG.NULL), ""))
            self.platform_policy = (alg, _b(digest))
            self.sh_enable, self.eh_enable, self.ph_enable_nv = saved.get("enables",
                                                                          (True, True, True))
        else:
            self.platform_policy = (TPM_ALG.NULL, b"")
            self.sh_enable = self.eh_enable = self.ph_enable_nv = True
        act.startup(self, kind, (saved or {}).get("act"))
        nv["orderly"] = None
        nv["saved"] = None
        self.started = True
        self.dirty = True
        return kind

    def shutdown(self, shutdown_type):
        nv = self.nv
        if shutdown_type == TPM_SU.STATE:
            nv["saved"] = {
                "platform_auth": _h(self.platform_auth),
                "pcr_auth": _h(self.pcr_auth),
                "platform_policy": [int(self.platform_policy[0]), _h(self.platform_policy[1])],
                "enables": [self.sh_enable, self.eh_enable, self.ph_enable_nv],
                "restart_count": self.restart_count,
                "pcr_counter": self.pcr_counter,
                "null_proof": _h(self.null_proof),
                "null_seed": _h(self.null_seed),
                "contexts": json.loads(json.dumps(self.contexts)),
                "locality3": self.startup_locality3,
                "command_audit_digest": _h(self.command_audit_digest or b""),
                "ecdaa_commit": ecdaa.saved(self),
                "act": act.saved(self),
                "pcrs": {str(alg): [_h(v) if PCR_ATTRIBUTES[i][0] and v is not None else None
                                    for i, v in enumerate(bank)]
                         for alg, bank in self.pcrs.items()},
            }
            nv["orderly"] = "STATE"
        else:
            nv["saved"] = None
            nv["orderly"] = "CLEAR"
        self.safe = True
        self.dirty = True

    def pcr_policy(self):
        """(hashAlg, authPolicy) of the PCR policy group (persistent; TPM_ALG_NULL, b"" until
        PCR_SetAuthPolicy, and again after ChangePPS)."""
        alg, policy = self.nv.get("pcr_policy") or (int(TPM_ALG.NULL), "")
        return TPM_ALG(alg), _b(policy)

    def clear_orderly(self):
        """A change to state-saved data after Shutdown makes the shutdown disorderly again."""
        if self.nv["orderly"] is not None:
            self.nv["orderly"] = None
            self.nv["saved"] = None
            self.dirty = True

    # -- PCRs ---------------------------------------------------------------------------------

    def _init_pcrs(self, locality, saved):
        self.startup_locality3 = locality == 3
        self.pcrs = {}

        def restored(alg, i):
            return saved is not None and saved.get(str(alg)) and saved[str(alg)][i] is not None
        # Every PCR (re)initialized counts as a change, as in the reference TPM's PCRStartup.
        for i in range(IMPLEMENTATION_PCR):
            if not PCR_ATTRIBUTES[i][0] or saved is None:
                if i not in PCR_NO_INCREMENT:
                    self.pcr_counter = (self.pcr_counter + 1) & 0xFFFFFFFF
        # a bank lists all PCRs; those not allocated in it are None
        for alg, bits in pcr_allocation(self.nv["pcr_allocated"]).items():
            size = HASH_SIZES[alg]
            bank = []
            for i, (_save, reset_loc, _ext) in enumerate(PCR_ATTRIBUTES):
                if not bits >> i & 1:
                    bank.append(None)
                    continue
                if restored(alg, i):
                    bank.append(_b(saved[str(alg)][i]))
                    continue
                value = bytearray((0xFF if reset_loc & 0x10 else 0,) * size)
                if i == 0:
                    value[-1] = locality   # H-CRTM PCR 0 records the startup locality
                bank.append(bytes(value))
            self.pcrs[TPM_ALG(alg)] = bank

    # -- DRTM (_TPM_Hash_Start/Data/End, Part 1 §34.3) -----------------------------------------

    def drtm_hash_start(self, locality=4):
        self.drtm = {alg: hashes.new(alg) for alg in self.pcrs}

    def drtm_hash_data(self, data):
        if self.drtm is None:
            return
        for h in self.drtm.values():
            h.update(data)

    def drtm_hash_end(self):
        """PCR 17 := Extend(0...0, H(data)) in every bank (where allocated); the TPM is now
        'established'."""
        if self.drtm is None:
            return
        for alg, h in self.drtm.items():
            size = HASH_SIZES[alg]
            bank = self.pcrs[alg]
            if bank[17] is not None:
                bank[17] = hashes.digest(alg, b"\0" * size + h.digest())
            for i in range(18, 23):
                if bank[i] is not None:
                    bank[i] = b"\0" * size
        self.drtm = None
        self.established = True
        self.dirty = True

    # -- sessions --------------------------------------------------------------------------------

    def free_session_handle(self, session_type) -> int:
        """The lowest free session slot, as an HMAC (0x02) or policy (0x03) session handle."""
        used = {h & 0xFFFFFF for h in self.sessions}
        if len(used) >= self.config.max_sessions:
            raise TpmError(TPM_RC.SESSION_MEMORY)
        # a saved session keeps its handle; loaded and saved count against the active limit
        used |= {int(h, 16) & 0xFFFFFF for h in self.contexts["saved_sessions"]}
        if len(used) >= max_active_sessions(self.config):
            raise TpmError(TPM_RC.SESSION_HANDLES)
        slot = next(i for i in range(len(used) + 1) if i not in used)
        kind = TPM_HT.HMAC_SESSION if session_type == TPM_SE.HMAC else TPM_HT.POLICY_SESSION
        return (kind << 24) | slot

    # -- hierarchies ----------------------------------------------------------------------------

    def object(self, handle):
        """The loaded or persistent object a handle names (checked to exist beforehand)."""
        obj = self.objects.get(handle)
        return obj if obj is not None else self.persistent[handle]

    def hierarchy_enabled(self, hierarchy) -> bool:
        """phEnable / shEnable / ehEnable (the NULL hierarchy is always enabled)."""
        if hierarchy == TPM_RH.PLATFORM:
            return self.ph_enable
        if hierarchy == TPM_RH.OWNER:
            return self.sh_enable
        if hierarchy == TPM_RH.ENDORSEMENT:
            return self.eh_enable
        return True

    def primary_seed(self, hierarchy) -> bytes:
        if hierarchy == TPM_RH.OWNER:
            return _b(self.nv["sps"])
        if hierarchy == TPM_RH.ENDORSEMENT:
            return _b(self.nv["eps"])
        if hierarchy == TPM_RH.PLATFORM:
            return _b(self.nv["pps"])
        return self.null_seed

    def proof(self, hierarchy):
        if hierarchy == TPM_RH.OWNER:
            return _b(self.nv["sh_proof"])
        if hierarchy == TPM_RH.ENDORSEMENT:
            return _b(self.nv["eh_proof"])
        if hierarchy == TPM_RH.PLATFORM:
            return _b(self.nv["ph_proof"])
        return self.null_proof
