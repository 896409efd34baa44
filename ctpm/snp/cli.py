"""`ctpm snp ...`: obtain SEV-SNP evidence from the command line.

`ctpm snp report` asks a report provider for a report over the given REPORT_DATA and writes
the report's 1184 bytes to a file and, with --certs, each certificate of the host's table as
DER (vcek.der, vlek.der, ask.der, ark.der; unknown GUIDs as <guid>.bin).
Exit status: 0 done, 1 the provider could not produce a report (one line on stderr: missing
device, permission, firmware error), 2 a usage mistake. Imports stay light: `ctpm run` builds
this parser too.
"""
import os
import sys

REPORT_DATA_SIZE = 64
PROVIDER_CHOICES = ("configfs", "sev-guest", "simulated", "auto")
PRODUCT_CHOICES = ("milan", "genoa", "turin")


class UsageError(Exception):
    pass


def add_parsers(subparsers):
    """Register `snp` (with `report`) on the `ctpm` command's subparsers."""
    snp = subparsers.add_parser("snp", help="AMD SEV-SNP attestation evidence")
    commands = snp.add_subparsers(dest="snp_command", metavar="SUBCOMMAND")
    report = commands.add_parser(
        "report", help="obtain an attestation report (and the host's certificates)",
        description="Obtain an SEV-SNP attestation report over REPORT_DATA.")
    report.add_argument("--provider", choices=PROVIDER_CHOICES, default="auto",
                        help="configfs (configfs-tsm, Linux 6.7+), sev-guest (/dev/sev-guest), "
                             "simulated (a simulated AMD-SP, never trusted by default), or auto "
                             "(configfs, else sev-guest; never the simulator). Default: auto")
    report.add_argument("--report-data", metavar="HEX", required=True,
                        help="REPORT_DATA: up to 64 bytes in hex; shorter values are "
                             "zero-padded on the right to 64 bytes")
    report.add_argument("--vmpl", type=int, choices=range(4), metavar="N",
                        help="VMPL of the report (0-3; default: the lowest the guest may ask for, "
                             "configfs-tsm's privlevel_floor or sev-guest's vmpck_id)")
    report.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="write the 1184-byte report to FILE")
    report.add_argument("--certs", metavar="DIR",
                        help="write the host's certificates to DIR (vcek.der, vlek.der, "
                             "ask.der, ark.der; unknown GUIDs as <guid>.bin)")
    report.add_argument("--cert-table", metavar="FILE",
                        help="write the host's raw certificate table to FILE (what "
                             "`ctpm verify-report --cert-table` reads)")
    report.add_argument("--sim-dir", metavar="DIR",
                        help="the simulated AMD-SP's directory (created if absent; holds its "
                             "private keys); required with --provider simulated")
    report.add_argument("--product", choices=PRODUCT_CHOICES,
                        help="the simulated AMD-SP's product when it is created (default milan)")
    report.add_argument("--configfs-root", metavar="DIR",
                        help="configfs-tsm report directory (default /sys/kernel/config/tsm/"
                             "report)")
    report.add_argument("--device", metavar="PATH",
                        help="sev-guest device (default /dev/sev-guest)")
    snp.set_defaults(snp_parser=snp)
    return snp


def parse_report_data(text: str) -> bytes:
    """Hex of at most 64 bytes, zero-padded on the right (a 32-byte digest is common)."""
    cleaned = text.strip()
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        data = bytes.fromhex(cleaned)
    except ValueError:
        raise UsageError(f"--report-data {text!r} is not hex") from None
    if len(data) > REPORT_DATA_SIZE:
        raise UsageError(f"--report-data is {len(data)} bytes, at most {REPORT_DATA_SIZE}")
    return data.ljust(REPORT_DATA_SIZE, b"\0")


def _options(args) -> dict:
    if args.provider == "simulated":
        if not args.sim_dir:
            raise UsageError("--provider simulated needs --sim-dir DIR (the simulated AMD-SP "
                             "keeps its keys there)")
        return {"directory": args.sim_dir, "product": args.product}
    if args.sim_dir or args.product:
        raise UsageError("--sim-dir and --product apply only to --provider simulated")
    options = {}
    if args.configfs_root and args.provider in ("configfs", "auto"):
        options["root"] = args.configfs_root
    if args.device and args.provider in ("sev-guest", "auto"):
        options["device"] = args.device
    return options


def _cert_name(guid) -> str:
    from .report import CERT_GUID_NAMES
    name = CERT_GUID_NAMES.get(guid)
    return f"{name}.der" if name else f"{guid}.bin"


def _write(path: str, data: bytes):
    """Whole or not at all: a reader never sees half a report."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OSError(e.errno, e.strerror, path) from None


def run(args) -> int:
    """`ctpm snp ...` after parsing: 0 done, 1 provider error, 2 usage."""
    if getattr(args, "snp_command", None) != "report":
        args.snp_parser.print_usage(sys.stderr)
        return 2
    from .errors import ProviderError, SnpError
    from .providers import certificates as parse_certificates
    from .providers import open_provider
    try:
        report_data = parse_report_data(args.report_data)
        options = _options(args)
        provider = open_provider(args.provider, **options)
    except UsageError as e:
        return _fail(2, e)
    except (ValueError, SnpError) as e:      # e.g. a --sim-dir that simulates another product
        return _fail(2, getattr(e, "message", e))
    except ProviderError as e:
        return _fail(1, e)
    except OSError as e:
        return _fail(1, f"{e.filename or ''}: {os.strerror(e.errno) if e.errno else e}")
    try:
        evidence = provider.report(report_data, vmpl=args.vmpl)
    except ProviderError as e:
        return _fail(1, e)
    except OSError as e:
        return _fail(1, f"{provider.name}: {e}")
    certificates = {}
    if args.certs:
        try:
            certificates = parse_certificates(evidence)
        except SnpError as e:
            return _fail(1, f"the {evidence.provider} certificate table: {e.message}")
    try:
        _write(args.output, evidence.report)
        print(f"report: {args.output} ({len(evidence.report)} bytes, provider "
              f"{evidence.provider})")
        if args.cert_table and evidence.cert_table:
            _write(args.cert_table, evidence.cert_table)
            print(f"certificate table: {args.cert_table} ({len(evidence.cert_table)} bytes)")
        if args.certs:
            os.makedirs(args.certs, exist_ok=True)
            for guid, der in certificates.items():
                path = os.path.join(args.certs, _cert_name(guid))
                _write(path, der)
                print(f"certificate: {path} ({len(der)} bytes)")
    except OSError as e:
        return _fail(1, f"cannot write {e.filename}: {os.strerror(e.errno) if e.errno else e}")
    if (args.certs and not certificates) or (args.cert_table and not evidence.cert_table):
        print(f"ctpm: snp report: {evidence.provider} returned no certificate table (the host "
              f"supplies none; the VCEK is at AMD's KDS)", file=sys.stderr)
    return 0


def _fail(code: int, message) -> int:
    text = " ".join(str(message).split())           # always one line
    print(f"ctpm: snp report: {text}", file=sys.stderr)
    return code
