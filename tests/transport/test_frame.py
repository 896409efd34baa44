"""frame.py: the framing rules without trio, which early.py serves with before trio is
imported (a cold `ctpm run`), and which framing.py and the transports re-use."""
import subprocess
import sys

from ctpm.transport import frame, framing

GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")


def test_early_serving_does_not_import_trio():
    """What a cold start loads before it serves: early.py and frame.py, never trio (100-250 ms
    of import on a busy machine) nor framing.py (which needs it)."""
    r = subprocess.run([sys.executable, "-c", "import sys, ctpm.transport.early, "
                        "ctpm.transport.frame; print(' '.join(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "ctpm.transport.frame" in loaded
    assert not {m for m in loaded if m == "trio" or m.startswith(("trio.", "_trio"))}
    assert "ctpm.transport.framing" not in loaded


def test_framing_re_exports_the_rules():
    for name in ("HEADER", "HEADER_SIZE", "U32", "COMMAND_SIZE_ERROR", "DEFAULT_MAX_COMMAND_SIZE",
                 "check_command", "error_response", "looks_like_tpm_command"):
        assert getattr(framing, name) is getattr(frame, name), name


def test_command_size():
    assert frame.command_size(GET_RANDOM_8, 4096) == 12
    assert frame.command_size(GET_RANDOM_8[:10], 4096) == 12        # the header is enough
    assert frame.command_size(GET_RANDOM_8[:9], 4096) is None       # not yet a header
    assert frame.command_size(b"\x80\x03" + GET_RANDOM_8[2:], 4096) is None    # no TPM tag
    assert frame.command_size(b"\x00\x00\x00\x08" + bytes(6), 4096) is None    # mssim code
    assert frame.command_size(GET_RANDOM_8, 11) is None             # over the limit
    assert frame.command_size(bytes.fromhex("800200000009") + bytes(4), 4096) is None
    assert frame.command_size(bytes.fromhex("800200001000") + bytes(4), 4096) == 4096


def test_locality_range_is_swtpms():
    assert [n for n in range(256) if frame.locality_allowed(n)] == [0, 1, 2, 3, 4]
