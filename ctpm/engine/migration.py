"""State blobs for moving a running TPM to another process (QEMU live migration over swtpm's
control channel: GET_STATEBLOB / SET_STATEBLOB, then INIT on the destination).

Three blobs, as swtpm has them. PERMANENT is the NV image (the file `--state` keeps).
VOLATILE is everything a running TPM holds in RAM - started or not, the PCRs, loaded objects
and sessions, the clocks as offsets, the state-clear and state-reset data, orderly NV
indices, the DA timers - so that the destination goes on without a TPM2_Startup, as the
source would have. SAVESTATE is empty: what Shutdown(STATE) saves is part of the NV image
here. The blobs are this TPM's own format (JSON; objects and sessions in the encoding of
saved contexts, engine/subsystems/contexts.py) and only ever read by ctpm.

A loaded hash, HMAC or event sequence cannot move: Python's hash objects do not export their
state. A VOLATILE blob is then refused (`MigrationError`), and QEMU's migration with it.
"""
import json

from .subsystems import act, contexts as context, da, ecdaa
from .subsystems.objects import Object
from .subsystems.state import TpmState

PERMANENT, VOLATILE, SAVESTATE = 1, 2, 3
TYPES = (PERMANENT, VOLATILE, SAVESTATE)
_FORMAT, _VERSION = "ctpm-volatile", 1


class MigrationError(Exception):
    """The state cannot be captured or restored; the message says why."""


def _h(b: bytes | None):
    return None if b is None else bytes(b).hex()


def _b(s: str | None):
    return None if s is None else bytes.fromhex(s)


def get_blob(tpm, kind: int) -> bytes:
    """The state blob of `kind` (PERMANENT, VOLATILE or SAVESTATE) of a TPM as it is now."""
    state = tpm.state
    if kind == PERMANENT:
        return state.image()
    if kind == SAVESTATE:
        return b""
    if kind == VOLATILE:
        return json.dumps(_volatile(tpm), sort_keys=True).encode()
    raise MigrationError(f"unknown state blob type {kind}")


def _volatile(tpm) -> dict:
    state = tpm.state
    if not tpm.powered:
        return {"format": _FORMAT, "version": _VERSION, "powered": False}
    out = {"format": _FORMAT, "version": _VERSION, "powered": True,
           "started": state.started, "time": state.time(), "clock": state.clock()}
    if not state.started:
        return out
    objects = {}
    for handle, obj in state.objects.items():
        if not isinstance(obj, Object):
            raise MigrationError("a hash, HMAC or event sequence is loaded; its hash state "
                                 "cannot be moved (flush or complete it first)")
        objects[f"{handle:08x}"] = context.encode_object(obj).hex()
    timers = getattr(state, "_da_timers", None)
    out.update({
        "safe": state.safe, "orderly_startup": state.orderly_startup,
        "restart_count": state.restart_count, "pcr_counter": state.pcr_counter,
        "null_proof": _h(state.null_proof), "null_seed": _h(state.null_seed),
        "contexts": state.contexts,
        "pcrs": {str(int(alg)): [_h(v) for v in bank] for alg, bank in state.pcrs.items()},
        "platform_auth": _h(state.platform_auth), "pcr_auth": _h(state.pcr_auth),
        "platform_policy": [int(state.platform_policy[0]), _h(state.platform_policy[1])],
        "enables": [state.ph_enable, state.sh_enable, state.eh_enable, state.ph_enable_nv],
        "pcr_reconfig": state.pcr_reconfig, "clock_adjust": state.clock_adjust,
        "startup_locality3": state.startup_locality3,
        "command_audit_digest": _h(state.command_audit_digest),
        "exclusive_audit_session": state.exclusive_audit_session,
        "ecdaa_commit": ecdaa.saved(state),
        "act": act.volatile(state),
        "nv_ram": {k: [attrs, _h(data)] for k, (attrs, data) in state.nv_ram.items()},
        "da_timers": None if timers is None or timers[0] != state.init_ms else timers[1:],
        "objects": objects,
        "sessions": {f"{h:08x}": context.encode_session(s).hex()
                     for h, s in state.sessions.items()},
    })
    return out


def restore(tpm, permanent: bytes | None, volatile: bytes | None):
    """Replace the TPM's state with the blobs (INIT after SET_STATEBLOB): the NV image is
    written to the TPM's store at once; with a VOLATILE blob the TPM goes on running as the
    source was, without one it is powered on afresh (Startup needed)."""
    platform, config = tpm.platform, tpm.config
    if permanent is not None:
        nv = TpmState.decode_image(permanent, "the PERMANENT state blob")
        fixed = _b(nv["fixed_seed"]) if nv.get("fixed_seed") else None
        state = TpmState(platform, config, nv, fixed_seed=fixed)
    else:
        state = tpm.state
    values = None
    if volatile:
        try:
            values = json.loads(volatile)
        except ValueError as e:
            raise MigrationError(f"the VOLATILE state blob is corrupt ({e})") from None
        if values.get("format") != _FORMAT or values.get("version") != _VERSION:
            raise MigrationError("the VOLATILE state blob is not one this ctpm wrote")
    tpm.state = state
    state.commit(force=True)
    tpm.powered = True
    tpm.tpm_init()                               # a fresh volatile state, then the blob's
    if values is None or not values.get("powered"):
        return
    try:
        _apply(state, values)
    except (KeyError, TypeError, ValueError) as e:
        tpm.power_off()
        raise MigrationError(f"the VOLATILE state blob is incomplete ({e})") from None


def _apply(state, v: dict):
    now = state.platform.now_ms()
    state.init_ms = now - v["time"]
    state.clock_at_init = v["clock"] - v["time"]
    if not v["started"]:
        return
    state.safe, state.orderly_startup = v["safe"], v["orderly_startup"]
    state.restart_count, state.pcr_counter = v["restart_count"], v["pcr_counter"]
    state.null_proof, state.null_seed = _b(v["null_proof"]), _b(v["null_seed"])
    state.contexts = v["contexts"]
    state.pcrs = {int(alg): [_b(x) for x in bank] for alg, bank in v["pcrs"].items()}
    state.platform_auth, state.pcr_auth = _b(v["platform_auth"]), _b(v["pcr_auth"])
    alg, policy = v["platform_policy"]
    state.platform_policy = (alg, _b(policy))
    state.ph_enable, state.sh_enable, state.eh_enable, state.ph_enable_nv = v["enables"]
    state.pcr_reconfig, state.clock_adjust = v["pcr_reconfig"], v["clock_adjust"]
    state.startup_locality3 = v["startup_locality3"]
    state.command_audit_digest = _b(v["command_audit_digest"])
    state.exclusive_audit_session = v["exclusive_audit_session"]
    ecdaa.restore(state, v["ecdaa_commit"])
    if "act" in v:
        act.apply_volatile(state, v["act"])
    state.nv_ram = {k: [attrs, _b(data)] for k, (attrs, data) in v["nv_ram"].items()}
    if v["da_timers"] is not None:
        state._da_timers = [state.init_ms, *v["da_timers"]]
    da.self_heal(state)
    state.objects = {}
    for handle, payload in v["objects"].items():
        _kind, values = context.decode_fields(bytes.fromhex(payload))
        state.objects[int(handle, 16)] = context.decode_object(values)
    state.sessions = {}
    for handle, payload in v["sessions"].items():
        _kind, values = context.decode_fields(bytes.fromhex(payload))
        state.sessions[int(handle, 16)] = context.decode_session(values)
    state.started = True
