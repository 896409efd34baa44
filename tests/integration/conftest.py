import dataclasses

import pytest

from ctpm.config import load


@pytest.fixture
def ctpm_config(tmp_path):
    """mssim and swtpm (TCP and unix) listeners, so one daemon serves every TCTI."""
    config = load(mssim=["127.0.0.1:0"],
                  swtpm=["127.0.0.1:0", f"unix:{tmp_path}/swtpm.sock"])
    return dataclasses.replace(config, stall_timeout=1.0)
