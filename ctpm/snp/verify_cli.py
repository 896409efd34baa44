"""`ctpm verify-report`: verify an SEV-SNP attestation report from the command line.

Exit status 0 and a summary when every check passes; 1 and one line naming the failed check
(`ctpm: refused: CHECK: why`); 2 when the input cannot be used (unreadable file, bad hex, a
report whose VEK is neither given nor fetched - the line then shows the KDS URL).
"""
import argparse
import json
import os
import sys
from datetime import datetime, timezone


def add_parser(commands):
    p = commands.add_parser(
        "verify-report", help="verify an SEV-SNP attestation report (every check, named)",
        description="Verify an AMD SEV-SNP attestation report: AMD's certificate chain "
                    "(pinned ARK), the VEK, the report signature over the bytes given, and "
                    "the policy options below. Exit 0: verified; 1: refused (the line names "
                    "the check); 2: unusable input.")
    p.add_argument("report", metavar="REPORT",
                   help="the report: 1184 bytes, or a MSG_REPORT_RSP holding one")
    add_snp_options(p)
    p.add_argument("--json", action="store_true", help="print the verified facts as JSON")
    return p


def add_snp_options(p):
    """The certificate and policy options of every command that verifies an SNP report."""
    p.add_argument("--vek", metavar="FILE", help="the VCEK or VLEK (PEM or DER)")
    p.add_argument("--chain", metavar="FILE", action="append", default=[],
                   help="ASK/ASVK and/or ARK (PEM bundle, any order; AMD's built-in "
                        "certificates are used where absent); repeatable")
    p.add_argument("--cert-table", metavar="FILE",
                   help="an extended report's certificate table (configfs-tsm auxblob)")
    p.add_argument("--product", metavar="P", help="Milan, Genoa or Turin (needed for a v2 "
                                                   "report when no VEK names it)")
    p.add_argument("--report-data", metavar="HEX", help="expected REPORT_DATA (64 bytes)")
    p.add_argument("--measurement", metavar="HEX", action="append", default=[],
                   help="an allowed MEASUREMENT (48 bytes); repeatable")
    p.add_argument("--host-data", metavar="HEX", help="expected HOST_DATA (32 bytes)")
    p.add_argument("--id-key-digest", metavar="HEX", action="append", default=[],
                   help="an allowed ID_KEY_DIGEST (48 bytes); repeatable")
    p.add_argument("--vmpl", metavar="N", default="0",
                   help="expected VMPL (default 0; 'any' accepts every level)")
    p.add_argument("--min-tcb", metavar="bl=,tee=,snp=,ucode=,fmc=",
                   help="minimum REPORTED_TCB components")
    p.add_argument("--min-firmware", metavar="MAJOR.MINOR[.BUILD]",
                   help="minimum current and committed firmware version")
    p.add_argument("--min-guest-svn", metavar="N", type=int, default=0)
    p.add_argument("--allow-debug", action="store_true", help="accept a debuggable guest")
    p.add_argument("--allow-migration-agent", action="store_true")
    p.add_argument("--no-smt", action="store_true", help="refuse a guest policy allowing SMT")
    p.add_argument("--allow-provisional-firmware", action="store_true",
                   help="accept current firmware/TCB that is not committed")
    p.add_argument("--no-vlek", action="store_true", help="refuse VLEK-signed reports")
    p.add_argument("--at", metavar="TIME",
                   help="verification time, ISO 8601 (default: now); e.g. 2025-06-01T00:00Z")
    p.add_argument("--crl", metavar="FILE", action="append", default=[],
                   help="an ARK CRL (DER or PEM) to apply; repeatable")
    p.add_argument("--trust-ark", metavar="FILE", action="append", default=[],
                   help="also trust this ARK (e.g. a simulated AMD-SP's); never AMD's pin")
    p.add_argument("--fetch", action="store_true",
                   help="fetch a missing VCEK from AMD's KDS (the only network access)")
    p.add_argument("--cache", metavar="DIR",
                   default=os.path.join(os.path.expanduser("~"), ".cache", "ctpm", "kds"),
                   help="where --fetch keeps what it fetched (default ~/.cache/ctpm/kds)")


class _Unusable(Exception):
    pass


def _read(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _Unusable(f"cannot read {path}: {e.strerror}") from None


def _hex(value, size, what) -> bytes:
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise _Unusable(f"{what} is not hex: {value!r}") from None
    if len(data) != size:
        raise _Unusable(f"{what} must be {size} bytes ({2 * size} hex digits), got {len(data)}")
    return data


def _policy(args):
    from .verify import Policy, TCB_COMPONENTS
    min_tcb = {}
    if args.min_tcb:
        for item in args.min_tcb.split(","):
            name, _, value = item.partition("=")
            if name.strip() not in TCB_COMPONENTS or not value.strip().isdigit():
                raise _Unusable(f"--min-tcb: {item!r} is not COMPONENT=N "
                                f"({', '.join(TCB_COMPONENTS)})")
            min_tcb[name.strip()] = int(value)
    min_fw = None
    if args.min_firmware:
        try:
            min_fw = tuple(int(x) for x in args.min_firmware.split("."))
        except ValueError:
            raise _Unusable(f"--min-firmware: {args.min_firmware!r} is not MAJOR.MINOR") from None
    at = None
    if args.at:
        try:
            at = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
        except ValueError:
            raise _Unusable(f"--at: {args.at!r} is not an ISO 8601 time") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
    if args.vmpl == "any":
        vmpl = None
    elif args.vmpl.isdigit() and int(args.vmpl) <= 3:
        vmpl = int(args.vmpl)
    else:
        raise _Unusable(f"--vmpl: {args.vmpl!r} is not 0-3 or 'any'")
    return Policy(
        vmpl=vmpl,
        measurements=[_hex(m, 48, "--measurement") for m in args.measurement],
        min_tcb=min_tcb, min_firmware=min_fw, min_guest_svn=args.min_guest_svn,
        allow_debug=args.allow_debug, allow_migration_agent=args.allow_migration_agent,
        allow_smt=not args.no_smt, allow_provisional_firmware=args.allow_provisional_firmware,
        report_data=_hex(args.report_data, 64, "--report-data") if args.report_data else None,
        host_data=_hex(args.host_data, 32, "--host-data") if args.host_data else None,
        id_key_digests=[_hex(d, 48, "--id-key-digest") for d in args.id_key_digest],
        allow_vlek=not args.no_vlek, at=at)


def unwrap_report(data: bytes) -> bytes:
    """A raw report, or the report inside a MSG_REPORT_RSP (status 0, report_size 0x4A0)."""
    from .report import REPORT_SIZE, parse_msg_report_rsp
    if (len(data) > REPORT_SIZE and data[0:4] == bytes(4)
            and int.from_bytes(data[4:8], "little") == REPORT_SIZE):
        return parse_msg_report_rsp(data)
    return data


def run(args) -> int:
    return guarded("verify-report", _run, args)


def guarded(command: str, fn, args) -> int:
    """Run `fn(args)`: exit 1 with one line for a refused check, 2 for unusable input."""
    from .errors import SnpError
    try:
        return fn(args)
    except _Unusable as e:
        print(f"ctpm: {command}: {e}", file=sys.stderr)
        return 2
    except SnpError as e:
        if e.check in ("vek_missing", "certificate"):
            print(f"ctpm: {command}: {e}", file=sys.stderr)
            return 2
        print(f"ctpm: refused: {e.check}: {e.message}", file=sys.stderr)
        return 1
    except ValueError as e:        # a Policy value out of range
        print(f"ctpm: {command}: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    report = unwrap_report(_read(args.report))
    verifier, kwargs = snp_inputs(args, report)
    result = verifier.verify(report, **kwargs)
    print_verified(result, args.json)
    return 0


def snp_inputs(args, report: bytes, *, cert_table: bytes | None = None):
    """(Verifier, keyword arguments of Verifier.verify) from the options of
    `add_snp_options`; `cert_table` is used when no --cert-table is given."""
    from . import certs as C
    from .errors import SnpError
    from .report import AttestationReport, Product, SigningKey
    from .verify import Trust, Verifier

    policy = _policy(args)
    vek = _read(args.vek) if args.vek else None
    if vek is not None:
        try:
            vek = C.load_cert(vek)
        except SnpError as e:
            raise _Unusable(f"--vek {args.vek}: {e.message}") from None
    chain = [_read(f) for f in args.chain]
    table = _read(args.cert_table) if args.cert_table else (cert_table or None)
    crls = [_read(f) for f in args.crl]
    extra = []
    for f in args.trust_ark:
        for cert in C.load_certs(_read(f)):
            if C.cert_role(cert)[0] != "ark":
                raise _Unusable(f"--trust-ark {f}: {C.common_name(cert.subject)!r} is not an ARK")
            extra.append(cert)
    product = Product.parse(args.product) if args.product else None
    if vek is None and table is None:
        parsed = AttestationReport.parse(report)
        prod = parsed.cpuid_product or product
        if parsed.key.signing_key == SigningKey.VCEK and prod is not None:
            url = C.kds_vcek_url(prod, parsed.chip_id, parsed.tcb("reported", prod))
            if not args.fetch:
                raise SnpError("vek_missing", f"no VCEK given: it is at {url} "
                                              "(--vek FILE, or --fetch to get it)")
            try:
                vek = C.fetch(url, args.cache)
                if not chain:
                    chain = [C.fetch(C.kds_chain_url(prod), args.cache)]
            except OSError as e:
                raise _Unusable(f"fetching {url}: {e}") from None
    verifier = Verifier(Trust(extra_arks=tuple(extra)))
    return verifier, dict(vek=vek, chain=chain, cert_table=table, product=product, crls=crls,
                          policy=policy)


def print_verified(result, as_json: bool, extra: dict | None = None):
    facts = result.summary()
    if as_json:
        print(json.dumps({"verified": True, **facts, **(extra or {})}, indent=1))
        return
    root = "AMD" if result.root == "amd" else f"caller-trusted ARK {result.root[8:24]}..."
    print(f"verified: {facts['product']} report v{facts['version']}, "
          f"{facts['signing_key'].upper()}-signed, root {root}, VMPL {facts['vmpl']}")
    print(f"  reported TCB {result.reported_tcb}, firmware {facts['current_firmware']}, "
          f"policy {facts['policy']['value']} ({' '.join(facts['policy']['bits']) or '-'})")
    print(f"  measurement {facts['measurement']}")
    print(f"  report_data {facts['report_data']}")
    print(f"  host_data   {facts['host_data']}")
    print(f"  chip_id     {facts['chip_id'][:32]}..."
          + (" (masked)" if result.chip_id_masked else ""))
    for key, value in (extra or {}).items():
        print(f"  {key:11} {value}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ctpm")
    add_parser(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(["verify-report", *(argv or sys.argv[1:])]))
