"""Authenticated Countdown Timers (Part 1 §37.x "ACT", Part 3 §33; the reference's ACT_spt.c
and its platform's ACT code; libtpms 0.9 and swtpm have none).

ctpm implements ACT_0 and ACT_A, as the reference simulator. An ACT counts down once a
second from the value TPM2_ACT_SetTimeout gave it; reaching zero it is *signaled* (what a
platform would wire to a reset or an interrupt). A new non-zero value turns the signal off;
0xFFFFFFFF stops the countdown (allowed only while signaled, to turn the signal off). The
count runs on the TPM's Time (ms since _TPM_Init, from the injected platform clock) instead of
a hardware tick, and an update takes effect at once - so TPM_RC_RETRY (an update still
pending) never happens here.

Its authValue is platformAuth, its authPolicy its own (SetPrimaryPolicy on the ACT handle).
Startup(CLEAR) (TPM Reset or Restart) stops every ACT, clears the signals and the policies;
Shutdown(STATE) saves each count - halved if SetTimeout did not touch it since Startup, so
that saving state early and then not using the TPM cannot stretch it - and its signal, which
Startup(STATE) restores. An ACT signaled at that Shutdown reports preserveSignaled until its
next SetTimeout, unless power was lost (power_off).
"""
from ...wire.constants import TPM_ALG, TPM_RH

IMPLEMENTED = (0x0, 0xA)
MAX = 0xFFFFFFFF
SIGNALED, PRESERVE_SIGNALED = 0x1, 0x2         # TPMA_ACT


def number(handle: int):
    """The ACT a handle names, None if it is not an implemented ACT."""
    n = handle - TPM_RH.ACT_0
    return n if 0 <= n <= 0xF and n in IMPLEMENTED else None


def handles() -> list:
    return [TPM_RH.ACT_0 + n for n in IMPLEMENTED]


def init(state):
    """_TPM_Init: every ACT stopped (the platform's _plat__ACT_Initialize)."""
    state.act = {n: {"start": 0, "base": 0, "signaled": False} for n in IMPLEMENTED}
    state.act_updated = set()           # the reference's s_ActUpdated
    state.act_policies = {}             # go.ACT_n.hashAlg / authPolicy
    if not hasattr(state, "act_preserved"):
        state.act_preserved = 0         # go.preservedSignaled (kept over _TPM_Init)
        state.act_power_lost = True     # g_powerWasLost: a new TPM state, as after power-on


def _normalize(state, n):
    a = state.act[n]
    if a["start"] not in (0, MAX) and state.time() - a["base"] >= a["start"] * 1000:
        a["start"], a["signaled"] = 0, True


def remaining(state, n) -> int:
    _normalize(state, n)
    a = state.act[n]
    if a["start"] in (0, MAX):
        return a["start"]
    return a["start"] - (state.time() - a["base"]) // 1000


def signaled(state, n) -> bool:
    _normalize(state, n)
    return state.act[n]["signaled"]


def _set(state, n, value, is_signaled=False):
    state.act[n] = {"start": value, "base": state.time(), "signaled": is_signaled}


def set_timeout(state, n, value: int):
    """ActCounterUpdate plus the platform's update at the next tick: 0 while counting
    expires the ACT (signaled), any other value restarts the count with the signal off."""
    if value == 0:
        _set(state, n, 0, signaled(state, n) or remaining(state, n) != 0)
    else:
        _set(state, n, value)
    state.act_updated.add(n)
    state.act_preserved &= ~(1 << n)
    state.clear_orderly()


def power_off(state):
    state.act_preserved = 0
    state.act_power_lost = True


def saved(state) -> dict:
    """ActShutdown(STATE): each count (halved unless updated since Startup) and signal."""
    out = {}
    for n in IMPLEMENTED:
        count = remaining(state, n)
        if n not in state.act_updated and count != MAX and count > 1:
            count //= 2
        out[str(n)] = [count, signaled(state, n)]
    return {"acts": out, "policies": {str(n): [int(alg), digest.hex()]
                                      for n, (alg, digest) in state.act_policies.items()}}


def startup(state, kind: str, saved_state):
    """ActStartup: signals of the last Shutdown(STATE) become preserveSignaled; Resume
    restores counts, signals and policies, Reset and Restart stop everything."""
    acts = (saved_state or {}).get("acts", {})
    if state.act_power_lost:
        state.act_preserved = 0
    else:
        for key, (_count, was_signaled) in acts.items():
            if was_signaled:
                state.act_preserved |= 1 << int(key)
    state.act_power_lost = False
    state.act_updated = set()
    if kind == "resume" and saved_state:
        for key, (count, was_signaled) in acts.items():
            _set(state, int(key), count, bool(was_signaled) and count == 0)
        state.act_policies = {int(k): (TPM_ALG(alg), bytes.fromhex(d))
                              for k, (alg, d) in saved_state.get("policies", {}).items()}
    else:
        for n in IMPLEMENTED:
            _set(state, n, 0)
        state.act_policies = {}


def policy(state, n):
    return state.act_policies.get(n, (TPM_ALG.NULL, b""))


def set_policy(state, n, alg, digest):
    if alg == TPM_ALG.NULL:
        state.act_policies.pop(n, None)
    else:
        state.act_policies[n] = (alg, digest)
    state.clear_orderly()


def capability(state, first: int, count: int):
    """TPM_CAP_ACT from handle `first`: (TPMS_ACT_DATA values as tuples, more)."""
    chosen = [h for h in handles() if h >= first]
    out = []
    for h in chosen[:count]:
        n = number(h)
        attrs = (SIGNALED if signaled(state, n) else 0) | (
            PRESERVE_SIGNALED if state.act_preserved & (1 << n) else 0)
        out.append((h, remaining(state, n), attrs))
    return out, len(chosen) > count


def volatile(state) -> dict:
    """For a VOLATILE state blob (migration): counts as they are now."""
    return {"acts": {str(n): [remaining(state, n), signaled(state, n)] for n in IMPLEMENTED},
            "updated": sorted(state.act_updated), "preserved": state.act_preserved,
            "policies": {str(n): [int(alg), digest.hex()]
                         for n, (alg, digest) in state.act_policies.items()}}


def apply_volatile(state, v: dict):
    for key, (count, was_signaled) in v["acts"].items():
        _set(state, int(key), count, bool(was_signaled))
    state.act_updated = set(v["updated"])
    state.act_preserved = v["preserved"]
    state.act_policies = {int(k): (TPM_ALG(alg), bytes.fromhex(d))
                          for k, (alg, d) in v["policies"].items()}
