"""Part 3 §29: clocks and timers."""
from construct import Container

from ...errors import TpmError
from ...wire.constants import TPM_RC
from ..subsystems.clock import clock_info

MAX_CLOCK = 0xFFFF000000000000


def read_clock(tpm, ctx):
    """Part 3 §29.1: time since _TPM_Init, and the lifetime clock with its counters."""
    return (Container(time=tpm.state.time(), clockInfo=clock_info(tpm.state)),)


def clock_set(tpm, ctx, auth, new_time):
    """Part 3 §29.2: Clock may only move forward, and not past 0xFFFF000000000000."""
    state = tpm.state
    if new_time > MAX_CLOCK or new_time < state.clock():
        raise TpmError(TPM_RC.VALUE, param=1)
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    state.set_clock(new_time)


def clock_rate_adjust(tpm, ctx, auth, rate_adjust):
    """Part 3 §29.3: accepted and recorded (state.clock_adjust, the signed TPM_CLOCK_ADJUST
    summed since _TPM_Init), but ctpm's Time and Clock follow the host's monotonic clock and
    their rate is not changed."""
    adjust = rate_adjust - 256 if rate_adjust >= 0x80 else rate_adjust
    tpm.state.clock_adjust += adjust
