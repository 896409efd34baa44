import dataclasses

import pytest

from ctpm.config import load


@pytest.fixture
def ctpm_config(tmp_path):
    """Both protocols on 127.0.0.1 (port 0) plus swtpm on a unix socket; stalls end fast."""
    config = load(mssim=["127.0.0.1:0"],
                  swtpm=["127.0.0.1:0", f"unix:{tmp_path}/swtpm.sock"])
    return dataclasses.replace(config, stall_timeout=0.3)
