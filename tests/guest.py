"""Boot a Linux guest under QEMU with a TPM from the swtpm control-channel protocol
(`-tpmdev emulator`), the way QEMU users attach swtpm, and read what the guest saw.

The guest is the distribution's kernel with a tiny initramfs: a static busybox and an /init
script that prints the TPM's sysfs view, the firmware's event log (hex) and a TPM2_GetRandom
sent through /dev/tpm0, each line prefixed so the test can pick them out of the serial
console, then powers off. QEMU runs with TCG by default (the same on every machine; about
6 s per boot on 2 cores); CTPM_QEMU_ACCEL=kvm uses KVM where it works.
"""
import glob
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

QEMU = shutil.which("qemu-system-x86_64")
REPO = Path(__file__).resolve().parents[1]

# TPM2_PCR_Extend(PCR 16, SHA-256 digest 0x44 * 32) with an empty password, as octal escapes
# for the guest's printf
_EXTEND = (bytes.fromhex("800200000041000001820000001000000009400000090000000000000000010"
                         "00b") + b"\x44" * 32)
EXTEND_16 = "".join(f"\\{b:03o}" for b in _EXTEND)
EXTENDED_16 = __import__("hashlib").sha256(bytes(32) + b"\x44" * 32).digest()

INIT = r"""#!/bin/sh
/bin/busybox mkdir -p /usr/bin /usr/sbin /sbin /tmp
/bin/busybox --install -s 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t securityfs security /sys/kernel/security
t=/sys/class/tpm/tpm0
echo "GUEST version=$(cat $t/tpm_version_major 2>&1)"
for bank in sha1 sha256 sha384 sha512; do
  for i in 0 1 2 3 4 5 6 7 10; do
    echo "GUEST pcr $bank $i $(cat $t/pcr-$bank/$i 2>&1)"
  done
done
log=/sys/kernel/security/tpm0/binary_bios_measurements
[ -r $log ] && hexdump -v -e '32/1 "%02x" "\n"' $log | sed 's/^/GUEST log /'
ima=/sys/kernel/security/ima
[ -r $ima/binary_runtime_measurements ] && hexdump -v -e '32/1 "%02x" "\n"' \
  $ima/binary_runtime_measurements | sed 's/^/GUEST ima /'
[ -r $ima/ascii_runtime_measurements ] && sed 's/^/GUEST imatext /' \
  $ima/ascii_runtime_measurements
printf '\200\001\000\000\000\014\000\000\001\173\000\020' > /tmp/getrandom
@PAUSE@
exec 3<>/dev/tpm0
cat /tmp/getrandom >&3
echo "GUEST getrandom $(dd bs=4096 count=1 <&3 2>/dev/null | hexdump -v -e '/1 "%02x"')"
exec 3>&-
echo "GUEST done"
poweroff -f
"""
# for a live migration: extend PCR 16, say "ready", wait, read it again on the other side
PAUSE = r"""printf '@EXTEND@' > /tmp/extend
exec 3<>/dev/tpm0
cat /tmp/extend >&3
dd bs=4096 count=1 <&3 >/dev/null 2>&1
exec 3>&-
echo "GUEST ready"
sleep @SECONDS@
echo "GUEST after sha256 16 $(cat $t/pcr-sha256/16 2>&1)"
echo "GUEST after sha256 10 $(cat $t/pcr-sha256/10 2>&1)"
"""


def kernel() -> str | None:
    """A bootable x86-64 kernel: $CTPM_GUEST_KERNEL, the one `./dev.sh test` fetched into
    .cache/guest, or a readable /boot/vmlinuz-*."""
    candidates = [os.environ.get("CTPM_GUEST_KERNEL", ""), str(REPO / ".cache/guest/vmlinuz")]
    candidates += sorted(glob.glob("/boot/vmlinuz-*"), reverse=True)
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def _static_elf(path: str) -> bool:
    """A 64-bit ELF executable without a program interpreter (PT_INTERP): statically linked."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def busybox() -> str | None:
    """A statically linked busybox (Debian's busybox-static installs it as /bin/busybox)."""
    path = shutil.which("busybox")
    return path if path is not None and _static_elf(path) else None


def missing() -> str | None:
    """Why a guest cannot be booted here, or None."""
    if QEMU is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if busybox() is None:
        return "no static busybox (apt-get install busybox-static)"
    if kernel() is None:
        return "no guest kernel (./dev.sh test fetches one into .cache/guest)"
    return None


def _cpio(entries) -> bytes:
    """A newc cpio archive of (name, mode, data) entries, as the kernel unpacks an initramfs."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs(path: Path, pause: float = 0):
    """The initramfs; with `pause`, /init extends PCR 16 and waits that many seconds after
    its first readings (the window for a live migration), then reads PCRs 16 and 10 again."""
    with open(busybox(), "rb") as f:
        bb = f.read()
    middle = PAUSE.replace("@EXTEND@", EXTEND_16).replace("@SECONDS@", f"{pause:g}") \
        if pause else ""
    init = INIT.replace("@PAUSE@", middle)
    entries = [(d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys")]
    entries += [("bin/busybox", 0o100755, bb), ("bin/sh", 0o120777, b"busybox"),
                ("init", 0o100755, init.encode())]
    path.write_bytes(_cpio(entries))


class Boot:
    """What one boot printed: the TPM version, PCR values, event log, GetRandom response."""

    def __init__(self, console: str, stderr: str, returncode: int):
        self.console, self.stderr, self.returncode = console, stderr, returncode
        self.version = None
        self.pcrs = {}
        self.after = {}                 # read again after a pause (a live migration)
        log, ima, ima_text = [], [], []
        self.getrandom = None
        self.done = False
        for line in console.splitlines():
            start = line.find("GUEST ")     # after any firmware escape codes on the line
            if start < 0:
                continue
            parts = line[start:].split()
            if parts[1].startswith("version="):
                self.version = parts[1].split("=", 1)[1]
            elif parts[1] == "pcr" and len(parts) == 5:
                self.pcrs[parts[2], int(parts[3])] = bytes.fromhex(parts[4])
            elif parts[1] == "after" and len(parts) == 5:
                self.after[parts[2], int(parts[3])] = bytes.fromhex(parts[4])
            elif parts[1] == "log" and len(parts) == 3:
                log.append(parts[2])
            elif parts[1] == "ima" and len(parts) == 3:
                ima.append(parts[2])
            elif parts[1] == "imatext":
                ima_text.append(line[start + len("GUEST imatext "):] + "\n")
            elif parts[1] == "getrandom" and len(parts) == 3:
                self.getrandom = bytes.fromhex(parts[2])
            elif parts[1] == "done":
                self.done = True
        self.event_log = bytes.fromhex("".join(log))
        self.ima_log = bytes.fromhex("".join(ima))            # binary, SHA-1 digests
        self.ima_text = "".join(ima_text).encode()              # ASCII, SHA-1 digests


def _qemu(ctrl_socket: str, initrd: Path, device: str, *extra) -> list:
    accel = os.environ.get("CTPM_QEMU_ACCEL", "tcg")
    argv = [QEMU, "-machine", f"q35,accel={accel}", "-m", "256", "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", kernel(), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 loglevel=3",
            "-chardev", f"socket,id=chrtpm,path={ctrl_socket}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", f"{device},tpmdev=tpm0",
            *extra]
    if accel == "tcg":
        argv[3:3] = ["-cpu", "max"]
    return argv


def boot(ctrl_socket: str, tmp: Path, device: str = "tpm-tis", timeout: float = 180) -> Boot:
    """Boot the guest with its TPM on the emulator control socket `ctrl_socket`."""
    initrd = tmp / "initrd.cpio"
    if not initrd.exists():
        initramfs(initrd)
    r = subprocess.run(_qemu(ctrl_socket, initrd, device), capture_output=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return Boot(r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"),
                r.returncode)


def _qmp(path: Path, *commands) -> list:
    """QEMU's machine protocol: the replies ("return" or "error") to `commands`."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        f = s.makefile("rw")
        f.readline()                                        # the greeting
        replies = []
        for c in ({"execute": "qmp_capabilities"}, *commands):
            f.write(json.dumps(c) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:   # (events come in between)
                    replies.append(reply)
                    break
        return replies[1:]


def boot_and_migrate(source_ctrl: str, dest_ctrl: str, tmp: Path, pause: float = 4,
                     timeout: float = 180) -> tuple:
    """Boot the guest on `source_ctrl`'s TPM; when it is ready, live-migrate it (through a
    file) to a second QEMU whose TPM is `dest_ctrl`'s, where it finishes. Returns the two
    consoles as `Boot`s and the migration status."""
    initrd = tmp / "initrd-pause.cpio"
    initramfs(initrd, pause)
    image = tmp / "vm.migration"
    source = subprocess.Popen(_qemu(source_ctrl, initrd, "tpm-tis", "-qmp",
                                    f"unix:{tmp}/source.qmp,server=on,wait=off"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    console = []
    status = None
    try:
        for raw in source.stdout:
            console.append(raw.decode(errors="replace"))
            if "GUEST ready" in console[-1]:
                break
        else:
            raise RuntimeError("the guest never became ready: " + "".join(console)[-2000:])
        _qmp(tmp / "source.qmp",
             {"execute": "migrate", "arguments": {"uri": f"exec:cat > {image}"}})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = _qmp(tmp / "source.qmp",
                          {"execute": "query-migrate"})[0]["return"].get("status")
            if status in ("completed", "failed"):
                break
            time.sleep(0.05)
        _qmp(tmp / "source.qmp", {"execute": "quit"})
        source.wait(30)
    finally:
        if source.poll() is None:
            source.kill()
            source.wait()
    first = Boot("".join(console), source.stderr.read().decode(errors="replace"),
                 source.returncode)
    source.stdout.close()
    source.stderr.close()
    r = subprocess.run(_qemu(dest_ctrl, initrd, "tpm-tis", "-incoming", f"exec:cat {image}"),
                       capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    second = Boot(r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"),
                  r.returncode)
    return first, second, status


# -- the firmware's event log (TCG PC Client Platform Firmware Profile, crypto-agile) -----

_HASHES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
EV_NO_ACTION = 0x00000003


def replay(log: bytes) -> dict:
    """The PCR values the event log says: {(bank, pcr): value} for every extended PCR."""
    import hashlib

    # the first event is a TCG_PCR_EVENT (SHA-1 format) holding the Spec ID event
    size = struct.unpack_from("<I", log, 28)[0]
    spec = log[32:32 + size]
    assert spec[:16] == b"Spec ID Event03\0", spec[:16]
    count = struct.unpack_from("<I", spec, 24)[0]
    sizes = {}
    for i in range(count):
        alg, digest_size = struct.unpack_from("<HH", spec, 28 + 4 * i)
        sizes[alg] = digest_size
    pcrs = {}
    off = 32 + size
    while off + 12 <= len(log):
        pcr, event_type, n = struct.unpack_from("<III", log, off)
        if pcr == 0xFFFFFFFF or (pcr == 0 and event_type == 0 and n == 0):
            break                                   # padding after the last event
        off += 12
        digests = []
        for _ in range(n):
            alg = struct.unpack_from("<H", log, off)[0]
            digests.append((alg, log[off + 2:off + 2 + sizes[alg]]))
            off += 2 + sizes[alg]
        event_size = struct.unpack_from("<I", log, off)[0]
        off += 4 + event_size
        if event_type == EV_NO_ACTION:
            continue
        for alg, digest in digests:
            if alg not in _HASHES:
                continue
            name = _HASHES[alg]
            old = pcrs.get((name, pcr), bytes(hashlib.new(name).digest_size))
            pcrs[name, pcr] = hashlib.new(name, old + digest).digest()
    return pcrs
