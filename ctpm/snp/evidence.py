"""What a report provider hands back: the report, its certificates, and who made it."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Evidence:
    report: bytes                   # exactly the bytes the firmware (or simulator) gave
    cert_table: bytes | None        # the extended report's certificate table, if any
    provider: str                   # "configfs-tsm", "sev-guest" or "simulated"
    manifest: bytes | None = None   # an SVSM service manifest (configfs-tsm service reports)
