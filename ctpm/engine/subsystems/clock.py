"""The TPM's clocks as attestation and the clock commands report them (Part 3 §29 is
engine/commands/clock.py; Time, Clock and the counters live in TpmState)."""
from construct import Container


def clock_info(state):
    """TPMS_CLOCK_INFO now (TimeFillInfo): Clock, the reset and restart counts, safe."""
    return Container(clock=state.clock(), resetCount=state.nv["reset_count"],
                     restartCount=state.restart_count, safe=int(state.safe))
