"""Part 3 §29: clocks and timers."""
from construct import Container


def read_clock(tpm, ctx):
    """Part 3 §29.1: time since _TPM_Init, and the lifetime clock with its counters."""
    s = tpm.state
    return (Container(time=s.time(), clockInfo=Container(
        clock=s.clock(), resetCount=s.nv["reset_count"], restartCount=s.restart_count,
        safe=int(s.safe))),)
