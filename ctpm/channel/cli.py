"""`ctpm secret seal` (the operator) and `ctpm secret get` (the TEE application).

Exit codes: 0 done; 1 refused or failed (one line naming the check); 2 usage or unusable
input. Neither prints a secret; `get` writes it to a file created with mode 0600 (or stdout
with `-o -`).
"""
import json
import os
import sys


def add_parsers(commands):
    p = commands.add_parser("secret", help="secrets over the TEE<->TPM trusted channel "
                                           "(seal, get): docs/channel.md")
    sub = p.add_subparsers(dest="secret_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("seal", help="seal a secret in a TPM for attested TEEs")
    s.add_argument("--tcti", required=True, metavar="TCTI", help="the TPM (tpm2-tools form)")
    s.add_argument("--name", required=True, help="the secret's name (letters, digits, -_.)")
    s.add_argument("--in", dest="input", required=True, metavar="FILE", help="'-': stdin")
    s.add_argument("--pcrs", default="sha256:0,7", metavar="SEL",
                   help="PCRs whose current values the secret needs (default sha256:0,7)")
    s.add_argument("--authority", required=True, metavar="URL|PEM",
                   help="the verifier service (its /authority) or the authority's public "
                        "key file")
    s.add_argument("--tee-measurement", metavar="HEX", action="append", default=[],
                   help="launch measurements of the TEEs this secret is for (repeatable; "
                        "default: any the verifier's policy accepts)")
    s.add_argument("--ek-name", metavar="HEX",
                   help="the TPM's EK Name: `secret get` then refuses a token for another TPM")
    s.add_argument("--nv-index", metavar="HEX",
                   help="keep the secret in this NV index (read only through the policy, "
                        "written once) instead of a sealed object whose blobs the record "
                        "carries")
    s.add_argument("-o", "--output", metavar="FILE",
                   help="the record (default: NAME.json here); put it in the verifier's "
                        "--secrets directory, or --register it")
    s.add_argument("--register", metavar="TOKEN_FILE",
                   help="send the record to the --authority URL's /secrets with this "
                        "operator token (the service's --admin-token-file)")
    s.add_argument("--startup", action="store_true", help="send TPM2_Startup(CLEAR) first")
    s.set_defaults(main=run_seal)

    g = sub.add_parser("get", help="the TEE side: attest both ends and unseal a secret")
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcti", metavar="TCTI", help="the TPM (tpm2-tools form)")
    where.add_argument("--svsm", metavar="unix:PATH", help="the vTPM behind the SVSM "
                                                           "protocols")
    g.add_argument("--name", required=True)
    g.add_argument("--verifier", required=True, metavar="URL")
    g.add_argument("--audience", metavar="X",
                   help="the audience the verifier's tokens carry (default: the one the "
                        "verifier's /authority names)")
    g.add_argument("-o", "--output", required=True, metavar="FILE", help="'-': stdout")
    g.add_argument("--pcrs", metavar="SEL", help="PCRs the TPM quotes (the verifier policy's; "
                                                 "default sha256:0-7)")
    g.add_argument("--snp-provider", default="auto", metavar="NAME",
                   help="this TEE's SNP report source: auto | configfs | sev-guest | "
                        "simulated (with --snp-sim-dir; no verifier trusts it by default)")
    g.add_argument("--snp-sim-dir", metavar="DIR")
    g.add_argument("--startup", action="store_true", help="send TPM2_Startup(CLEAR) first")
    g.set_defaults(main=run_get)

    u = sub.add_parser("put", help="the TEE side: attest the TPM and provision a secret into "
                                   "it over the channel")
    where = u.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcti", metavar="TCTI")
    where.add_argument("--svsm", metavar="unix:PATH")
    u.add_argument("--name", required=True)
    u.add_argument("--in", dest="input", required=True, metavar="FILE", help="'-': stdin")
    u.add_argument("--verifier", required=True, metavar="URL")
    u.add_argument("--audience", metavar="X", help="as for get")
    u.add_argument("--seal-pcrs", default="sha256:0,7", metavar="SEL",
                   help="PCRs the secret is sealed to, at the values the verified quote "
                        "shows (default sha256:0,7)")
    u.add_argument("--pcrs", metavar="SEL", help="PCRs the TPM quotes (the verifier policy's)")
    u.add_argument("--nv-index", metavar="HEX")
    u.add_argument("--no-register", action="store_true",
                   help="do not send the record to the verifier (write it with -o)")
    u.add_argument("-o", "--output", metavar="FILE", help="also write the record here")
    u.add_argument("--snp-provider", default="auto", metavar="NAME")
    u.add_argument("--snp-sim-dir", metavar="DIR")
    u.add_argument("--startup", action="store_true", help="send TPM2_Startup(CLEAR) first")
    u.set_defaults(main=run_put)


def startup(tpm):
    """TPM2_Startup(CLEAR); a TPM already started (TPM_RC_INITIALIZE) is fine."""
    from .tpm import TpmError, u16
    try:
        tpm.call("Startup", u16(0))
    except TpmError as e:
        if e.rc != 0x100:
            raise


def _fail(command, message, status):
    print(f"ctpm: secret {command}: {message}", file=sys.stderr)
    return status


def _open(args, command):
    """The TEE's transport to the TPM (--tcti or --svsm), started with --startup; or the exit
    status after one line saying why not."""
    from .tpm import ChannelError, TpmChannel
    from .transport import SvsmTransport, TctiTransport
    where = args.tcti or args.svsm
    try:
        transport = TctiTransport(args.tcti) if args.tcti else SvsmTransport(args.svsm)
    except Exception as e:
        return _fail(command, f"{where}: {type(e).__name__}: {e}", 1)
    if args.startup:
        try:
            startup(TpmChannel(transport))
        except ChannelError as e:
            transport.close()
            return _fail(command, f"{where}: {e.check}: {e.message}", 1)
        except Exception as e:
            transport.close()
            return _fail(command, f"{where}: {type(e).__name__}: {e}", 1)
    return transport


def _read_input(path: str) -> bytes:
    """The secret from --in ('-': stdin); ValueError with the line to print."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


def _nv_index(text):
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError(f"--nv-index {text!r} is not hex") from None


def _write_record(record, output):
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, output)


def _provider(args):
    from ..snp.providers import open_provider
    if args.snp_provider == "simulated" and not args.snp_sim_dir:
        raise ValueError("--snp-provider simulated needs --snp-sim-dir")
    options = {"directory": args.snp_sim_dir} if args.snp_provider == "simulated" else {}
    try:
        return open_provider(args.snp_provider, **options)
    except Exception as e:
        raise ValueError(f"--snp-provider {args.snp_provider}: {e}") from None


def _authority_public(source: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from . import protocol as P
    if source.startswith(("http://", "https://")):
        from .client import VerifierClient
        info = VerifierClient(source).authority()
        public = bytes.fromhex(info["public"])
        P.parse_ecc_public(public)
        return public
    with open(source, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, None).public_key()
        except (ValueError, TypeError):
            raise ValueError("not a PEM public key (or unencrypted private key)") from None
    return P.authority_public(key)


def run_seal(args) -> int:
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from ..attest.tpm import parse_selection
    from .secrets import seal
    from .tpm import ChannelError, TpmChannel
    from .transport import TctiTransport
    try:
        selection = parse_selection(args.pcrs)
        for m in args.tee_measurement:
            if len(bytes.fromhex(m)) != 48:
                raise ValueError(f"--tee-measurement {m[:16]}...: not 48 bytes of hex")
        ek_name = bytes.fromhex(args.ek_name) if args.ek_name else None
        nv_index = _nv_index(args.nv_index)
    except ValueError as e:
        return _fail("seal", str(e), 2)
    try:
        data = _read_input(args.input)
    except ValueError as e:
        return _fail("seal", str(e), 2)
    try:
        authority = _authority_public(args.authority)
    except ChannelError as e:
        return _fail("seal", f"{e.check}: {e.message}", 1)
    except (OSError, ValueError, KeyError) as e:
        return _fail("seal", f"--authority {args.authority}: {e}", 2)
    output = args.output or f"{args.name}.json"
    admin = None
    if args.register:
        if not args.authority.startswith(("http://", "https://")):
            return _fail("seal", "--register needs --authority URL", 2)
        try:
            with open(args.register) as f:
                admin = f.read().strip()
        except OSError as e:
            return _fail("seal", f"--register {args.register}: {e.strerror}", 2)
    try:
        transport = TctiTransport(args.tcti)
    except Exception as e:
        return _fail("seal", f"{args.tcti}: {type(e).__name__}: {e}", 1)
    try:
        tpm = TpmChannel(transport)
        if args.startup:
            startup(tpm)
        record = seal(tpm, args.name, data, selection, authority, ek_name=ek_name,
                      nv_index=nv_index)
    except ValueError as e:
        return _fail("seal", str(e), 2)
    except ChannelError as e:
        return _fail("seal", f"{e.check}: {e.message}", 1)
    except Exception as e:          # a TCTI failure (tpm2_pytss.TSS2_Exception)
        return _fail("seal", f"{args.tcti}: {type(e).__name__}: {e}", 1)
    finally:
        transport.close()
    if args.tee_measurement:
        record["tee_measurements"] = [m.lower() for m in args.tee_measurement]
    try:
        _write_record(record, output)
    except OSError as e:
        return _fail("seal", f"cannot write {output}: {e.strerror}", 1)
    if admin is not None:
        from .client import VerifierClient
        try:
            VerifierClient(args.authority, admin_token=admin).register(None, record)
        except ChannelError as e:
            return _fail("seal", f"sealed, record {output}, but not registered: {e.check}: "
                                 f"{e.message}", 1)
    print(f"sealed {args.name!r}: object {record['object_name'][:16]}..., PCRs {record['pcrs']}"
          f"{' (enveloped)' if 'envelope' in record else ''}; record {output}"
          f"{', registered' if admin is not None else ''}")
    return 0


def run_get(args) -> int:
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from .client import get_secret
    from .tpm import ChannelError
    try:
        provider = _provider(args)
    except ValueError as e:
        return _fail("get", str(e), 2)
    transport = _open(args, "get")
    if isinstance(transport, int):
        return transport
    try:
        data = get_secret(transport, args.name, args.verifier, audience=args.audience,
                          provider=provider, pcrs=args.pcrs,
                          svsm_client=transport.client if args.svsm else None)
    except ChannelError as e:
        return _fail("get", f"refused: {e.check}: {e.message}", 1)
    except Exception as e:
        return _fail("get", f"{type(e).__name__}: {e}", 1)
    finally:
        transport.close()
    if args.output == "-":
        sys.stdout.buffer.write(data)
        return 0
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        return _fail("get", f"cannot write {args.output}: {e.strerror}", 1)
    print(f"got {args.name!r}: {len(data)} bytes -> {args.output}", file=sys.stderr)
    return 0


def run_put(args) -> int:
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from ..attest.tpm import parse_selection
    from .client import provision_secret
    from .tpm import ChannelError
    try:
        provider = _provider(args)
        parse_selection(args.seal_pcrs)
        nv_index = _nv_index(args.nv_index)
        if args.no_register and not args.output:
            raise ValueError("--no-register needs -o (the record would be lost)")
        data = _read_input(args.input)
    except ValueError as e:
        return _fail("put", str(e), 2)
    transport = _open(args, "put")
    if isinstance(transport, int):
        return transport
    try:
        record = provision_secret(transport, args.name, data, args.verifier,
                                  audience=args.audience, provider=provider,
                                  seal_pcrs=args.seal_pcrs, pcrs=args.pcrs, nv_index=nv_index,
                                  register=not args.no_register,
                                  svsm_client=transport.client if args.svsm else None)
    except ValueError as e:
        return _fail("put", str(e), 2)
    except ChannelError as e:
        return _fail("put", f"refused: {e.check}: {e.message}", 1)
    except Exception as e:
        return _fail("put", f"{type(e).__name__}: {e}", 1)
    finally:
        transport.close()
    if args.output:
        try:
            _write_record(record, args.output)
        except OSError as e:
            return _fail("put", f"cannot write {args.output}: {e.strerror}", 1)
    print(f"provisioned {args.name!r} ({record['kind']}, PCRs {record['pcrs']})"
          f"{'' if args.no_register else ', registered with the verifier'}", file=sys.stderr)
    return 0
