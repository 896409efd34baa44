"""Linux's vtpm_proxy: make this TPM the kernel's own (`/dev/tpmN`, `/dev/tpmrmN`), as
`swtpm chardev --vtpm-proxy` does, so that a ctpm inside a confidential VM serves IMA and
tpm2-tools on the device.

VTPM_PROXY_IOC_NEW_DEV on /dev/vtpmx (module tpm_vtpm_proxy) returns an anonymous file: each
read gives one command the kernel's TPM driver sends, each write answers it. The kernel also
sends TPM2_CC_SET_LOCALITY (0x20001000, one byte: the locality of the following commands),
which is answered here and never reaches the TPM.
"""
import ctypes
import errno
import logging
import os
import struct

log = logging.getLogger("ctpm.transport.vtpm_proxy")

VTPMX = "/dev/vtpmx"
VTPM_PROXY_FLAG_TPM2 = 1
CC_SET_LOCALITY = 0x20001000
_OK = struct.pack(">HII", 0x8001, 10, 0)
MAX_BUFFER = 4096                       # TPM_BUFSIZE of the kernel's driver


class VtpmProxyNewDev(ctypes.Structure):
    """struct vtpm_proxy_new_dev (include/uapi/linux/vtpm_proxy.h)."""

    _fields_ = [("flags", ctypes.c_uint32), ("tpm_num", ctypes.c_uint32),
                ("fd", ctypes.c_uint32), ("major", ctypes.c_uint32),
                ("minor", ctypes.c_uint32)]


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


VTPM_PROXY_IOC_NEW_DEV = _iowr(0xA1, 0x00, ctypes.sizeof(VtpmProxyNewDev))    # 0xC014A100


class VtpmProxyError(Exception):
    """No vtpm_proxy here (module not loaded, no permission); str() is one line."""


def create_device(vtpmx: str = VTPMX, *, ioctl=None) -> tuple[int, int]:
    """(file descriptor, N) of a new /dev/tpmN backed by us."""
    try:
        control = os.open(vtpmx, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise VtpmProxyError(f"{vtpmx} does not exist: load the tpm_vtpm_proxy module "
                             "(modprobe tpm_vtpm_proxy)") from None
    except PermissionError:
        raise VtpmProxyError(f"{vtpmx}: permission denied (creating a TPM device needs "
                             "root or CAP_SYS_ADMIN)") from None
    try:
        request = VtpmProxyNewDev(flags=VTPM_PROXY_FLAG_TPM2)
        if ioctl is None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.ioctl(control, ctypes.c_ulong(VTPM_PROXY_IOC_NEW_DEV),
                          ctypes.byref(request)) < 0:
                e = ctypes.get_errno()
                raise VtpmProxyError(f"{vtpmx}: VTPM_PROXY_IOC_NEW_DEV failed: "
                                     f"{os.strerror(e)} ({errno.errorcode.get(e, e)})")
        else:
            ioctl(control, VTPM_PROXY_IOC_NEW_DEV, request)
    finally:
        os.close(control)
    return request.fd, request.tpm_num


def answer_locality(command: bytes):
    """(response, locality) for the kernel's SET_LOCALITY; None for a TPM command."""
    if len(command) >= 10 and struct.unpack(">I", command[6:10])[0] == CC_SET_LOCALITY:
        if len(command) != 11 or command[10] > 4:
            return struct.pack(">HII", 0x8001, 10, 0x1C4), None   # TPM_RC_VALUE, param 1
        return _OK, command[10]
    return None


async def serve_fd(backend, fd: int, *, what: str = "vtpm-proxy"):
    """Answer the kernel's commands on `fd` until it is closed (the device went away)."""
    import trio

    from ..backend import Signal
    os.set_blocking(fd, False)
    if not backend.powered:
        await backend.signal(Signal.POWER_ON)
    locality = 0
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                command = os.read(fd, MAX_BUFFER)
            except BlockingIOError:
                continue
            except OSError as e:
                log.warning("%s: read failed (%s): the device is gone", what, e.strerror)
                return
            if not command:
                return
            special = answer_locality(command)
            if special is not None:
                response, new = special
                locality = locality if new is None else new
            else:
                response = await backend.execute(command, locality)
            try:
                os.write(fd, response)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                os.write(fd, response)
            except OSError as e:
                log.warning("%s: write failed (%s)", what, e.strerror)
    finally:
        os.close(fd)
