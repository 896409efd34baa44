"""The one error type of the SNP package: every refusal names the check that failed.

`check` is a stable name from `ctpm.snp.verify.CHECKS` (documented in docs/snp.md) so that
callers, logs and the CLI can tell *which* rule a report broke without parsing prose.
"""


class SnpError(Exception):
    """A report, certificate or provider answer that cannot be accepted."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


class ProviderError(Exception):
    """A report provider that cannot produce a report (missing device, firmware error)."""
