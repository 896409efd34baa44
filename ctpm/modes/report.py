"""The SNP report provider of a configuration (its own module so that the modes can use it
without importing the package that builds them: no import cycle)."""


def open_report_provider(config):
    """The SNP report provider `config` names (`ctpm.snp.providers.open_provider`)."""
    from ..snp.providers import open_provider
    options = {"directory": config.snp_sim_dir} if config.snp_provider == "simulated" else {}
    return open_provider(config.snp_provider, **options)
