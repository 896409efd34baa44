#!/usr/bin/env bash
# Set up and use ctpm from this checkout on Debian/Ubuntu (idempotent).
#
#   ./dev.sh run [ctpm run options]   install what is missing, then serve a TPM
#                                     (default: mssim on 127.0.0.1:2321, state in memory)
#   ./dev.sh test [pytest options]    install what is missing, then run the whole test suite
#   ./dev.sh bench [options]          ctpm against swtpm, side by side
#
# System packages come from apt (root, or sudo); Python packages go into ./.venv.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${CTPM_VENV:-.venv}
# libtss2-dev + pkg-config + gcc: to build tpm2-pytss; tpm2-tools and swtpm: the test peers;
# qemu-system-x86 + busybox-static: the guest-kernel tests (QEMU's -tpmdev emulator);
# tpm2-abrmd + its TCTI (+ dbus for a private bus): the resource-manager tests; openssl:
# certificate checks; systemd: systemd-socket-activate for the socket-activation test;
# redis-server: the verifier service's shared nonce store test (it starts its own).
APT_PACKAGES=(libtss2-dev pkg-config gcc tpm2-tools swtpm swtpm-tools qemu-system-x86
              busybox-static tpm2-abrmd libtss2-tcti-tabrmd0 openssl systemd dbus redis-server)

log() { printf 'dev.sh: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else log "need root to run: $*"; exit 1
    fi
}

python_bin() {
    for p in python3.13 python3.12 python3.11 python3; do
        if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$p"; return
        fi
    done
    return 1
}

apt_deps() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    local py
    if ! py=$(python_bin); then
        missing+=(python3 python3-venv python3-dev)
    else
        "$py" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
        [ -f "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing+=(python3-dev)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing system packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

venv() {
    local stamp="$VENV/.ctpm-installed"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$(python_bin)" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "installing ctpm and its Python dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
        # compat: a path in a .pth file, not setuptools' import hook (~20 ms at every start)
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" \
            --config-settings editable_mode=compat
        touch "$stamp"
    fi
}

# The guest-kernel tests boot the distribution's x86-64 kernel. It is fetched once into
# .cache/guest/vmlinuz from the kernel package (apt-get download, unpacked here, nothing
# installed). Without network or on another architecture the tests say why they skip.
guest_kernel() {
    local dir=.cache/guest meta pkg
    [ -f "$dir/vmlinuz" ] && return 0
    [ "$(uname -m)" = x86_64 ] || return 0
    mkdir -p "$dir"
    for meta in linux-image-amd64 linux-image-generic; do
        pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [ -n "$pkg" ] && break
    done
    if [ -z "$pkg" ]; then log "no kernel package found for the guest tests"; return 0; fi
    log "fetching $pkg for the guest-kernel tests"
    if (cd "$dir" && apt-get download -qq "$pkg" >/dev/null 2>&1) \
        && dpkg-deb --fsys-tarfile "$dir"/"$pkg"_*.deb | tar -x -O --wildcards './boot/vmlinuz-*' > "$dir/vmlinuz.part" \
        && [ -s "$dir/vmlinuz.part" ]; then
        mv "$dir/vmlinuz.part" "$dir/vmlinuz"
    else
        log "could not fetch $pkg: the guest-kernel tests will skip"
        rm -f "$dir/vmlinuz.part"
    fi
    rm -f "$dir"/*.deb
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    run)   apt_deps; venv; exec "$VENV/bin/ctpm" run "$@" ;;
    test)  apt_deps; venv; guest_kernel; exec "$VENV/bin/python" -m pytest "$@" ;;
    bench) apt_deps; venv; exec "$VENV/bin/python" bench/bench.py "$@" ;;
    setup) apt_deps; venv ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
