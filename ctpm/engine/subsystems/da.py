"""Part 1 §19.8 dictionary-attack protection as the reference TPM's DA.c and SessionProcess.c
do it (the Part 3 §25 commands are engine/commands/da.py).

Persistent (NV image, key "da"): failedTries, maxTries, recoveryTime and lockoutRecovery (in
seconds), whether lockoutAuth may be used, and whether a DA-protected authorization was
checked since the last Startup (the reference's USE_DA_USED: a disorderly shutdown after one
counts as a failure at the next Startup, since its failure might not have been recorded).
Volatile: the two self-healing timers, in TPM time (ms since _TPM_Init), as the reference
without ACCUMULATE_SELF_HEAL_TIMER: a power cycle starts them over.

Defaults are the reference's DAPreInstall_Init (and swtpm's): 3 tries, 1000 s, 1000 s.
"""
from ...errors import TpmError
from ...wire.constants import TPM_RC, TPM_RH

DEFAULTS = {"failed_tries": 0, "max_tries": 3, "recovery_time": 1000, "lockout_recovery": 1000,
            "lockout_auth_enabled": True, "used": False}


def _da(state) -> dict:
    da = state.nv.get("da")
    if da is None:                # an image from before DA: the manufacturer's values
        da = state.nv["da"] = dict(DEFAULTS)
    return da


def set_value(state, key, value):
    da = _da(state)
    if da[key] != value:
        da[key] = value
        state.dirty = True        # the dispatcher writes the image after this command


def _timers(state):
    """The self-heal and lockout timers (ms of TPM time), started over by _TPM_Init."""
    t = getattr(state, "_da_timers", None)
    if t is None or t[0] != state.init_ms:
        t = state._da_timers = [state.init_ms, 0, 0]
    return t


def self_heal(state):
    """DASelfHeal: take failedTries down by one per recoveryTime seconds since the last
    failure, and enable lockoutAuth again lockoutRecovery seconds after its failure."""
    da = _da(state)
    t = _timers(state)
    now = state.time()
    if da["failed_tries"]:
        if da["recovery_time"] == 0:
            set_value(state, "failed_tries", 0)
        else:
            decrease = (now - t[1]) // 1000 // da["recovery_time"]
            if decrease:
                set_value(state, "failed_tries", max(0, da["failed_tries"] - decrease))
                t[1] += decrease * da["recovery_time"] * 1000
    if not da["lockout_auth_enabled"] and da["lockout_recovery"]:
        if (now - t[2]) // 1000 >= da["lockout_recovery"]:
            set_value(state, "lockout_auth_enabled", True)


def values(state) -> dict:
    """The current DA state (after self-healing), for GetCapability."""
    self_heal(state)
    return dict(_da(state))


def in_lockout(state) -> bool:
    da = values(state)
    return da["failed_tries"] >= da["max_tries"]


def check_locked_out(tpm, lockout_auth: bool):
    """CheckLockedOut, before a DA-protected authValue is used (lockout_auth: lockoutAuth's,
    which has its own lockout), or a session bound to a DA-protected entity is used."""
    state = tpm.state
    da = values(state)
    if lockout_auth:
        if not da["lockout_auth_enabled"]:
            raise TpmError(TPM_RC.LOCKOUT)
        return
    if da["failed_tries"] >= da["max_tries"]:
        raise TpmError(TPM_RC.LOCKOUT)
    if not da["used"]:
        # (the reference answers TPM_RC_RETRY here after writing the flag; this TPM
        # writes it with the command's other NV changes and goes on). After a Shutdown the
        # flag is clear, so this also makes that shutdown disorderly (SU_DA_USED_VALUE): a
        # failure that follows might never reach NV, and the next Startup must count it.
        set_value(state, "used", True)
        state.clear_orderly()


def register_failure(tpm, handle) -> int:
    """IncrementLockout for a DA-protected entity: count the failure (unless DA is off),
    or disable lockoutAuth; start the healing timer over. Returns TPM_RC_AUTH_FAIL."""
    state = tpm.state
    da = _da(state)
    t = _timers(state)
    if handle == TPM_RH.LOCKOUT:
        # with lockoutRecovery 0 only a Startup enables it again (written all the same)
        set_value(state, "lockout_auth_enabled", False)
        t[2] = state.time()
    else:
        if da["recovery_time"] != 0:
            set_value(state, "failed_tries", da["failed_tries"] + 1)
        t[1] = state.time()
    return TPM_RC.AUTH_FAIL


def startup(state, previous_orderly):
    """DAStartup: lockoutAuth is back if lockoutRecovery is 0; a disorderly shutdown after a
    DA-protected authorization counts as one failure (the reference's g_daUsed)."""
    da = _da(state)
    _timers(state)
    if da["lockout_recovery"] == 0:
        set_value(state, "lockout_auth_enabled", True)
    used = da["used"]
    set_value(state, "used", False)
    if (used and previous_orderly is None and da["recovery_time"] != 0
            and da["failed_tries"] < da["max_tries"]):
        set_value(state, "failed_tries", da["failed_tries"] + 1)
    self_heal(state)


def shutdown(state):
    """TPM2_Shutdown clears the flag (g_daUsed := FALSE), so that the first DA-protected
    authorization after it voids the orderly shutdown."""
    set_value(state, "used", False)


def clear(state):
    """TPM2_Clear runs DAPreInstall_Init: the manufacturer's DA values again."""
    state.nv["da"] = dict(DEFAULTS)
    state.dirty = True
