"""Load the ctpm pytest plugin (fixtures ctpm_tpm, ctpm_server, ctpm_esapi, ...) when ctpm
is not installed; once installed, its `pytest11` entry point loads it (loading it twice is
an error)."""
from importlib.metadata import entry_points

if not any(ep.value == "ctpm.testing.plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["ctpm.testing.plugin"]
