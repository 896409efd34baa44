"""`ctpm attest` (the attester) and `ctpm verify` (composite evidence against a policy).

attest: exit 0 and the evidence JSON written; 1 when the TPM or the report cannot be had
(one line); 2 for usage mistakes. verify: exit 0 and a summary; 1 and one line naming the
failed check; 2 for unusable input (file, nonce, policy).
"""
import json
import os
import sys


def add_parsers(commands):
    a = commands.add_parser("attest", help="composite evidence (TPM quote + SNP report) for "
                                           "a verifier's nonce")
    a.add_argument("--tcti", required=True, metavar="TCTI",
                   help="the TPM, as tpm2-tools names it (mssim:host=,port= / swtpm:... / "
                        "device:/dev/tpmrm0)")
    a.add_argument("--nonce", metavar="HEX", help="the verifier's 64 bytes (or --challenge)")
    a.add_argument("--challenge", metavar="FILE",
                   help="the verifier's challenge JSON ({\"nonce\": HEX, \"ak_certify\": ...}, "
                        "as /challenge or `ctpm verifier challenge` give it): its nonce, and "
                        "for manifest v0 the key wrapped to the EK that certifies the AK")
    a.add_argument("-o", "--output", required=True, metavar="FILE", help="'-': stdout")
    a.add_argument("--pcrs", default="sha256:0,1,2,3,4,5,6,7", metavar="SEL",
                   help="PCRs to quote, tpm2-tools form (default sha256:0-7)")
    a.add_argument("--event-log", metavar="FILE",
                   help="the TCG PC Client binary log (e.g. /sys/kernel/security/tpm0/"
                        "binary_bios_measurements)")
    a.add_argument("--ima-log", metavar="FILE", help="the IMA runtime measurement log, binary or ASCII (replayed against PCR 10: quote it)")
    a.add_argument("--uuid", metavar="UUID", help="this instance's id, echoed in the token")
    a.add_argument("--startup", action="store_true", help="send TPM2_Startup(CLEAR) first")
    a.add_argument("--svsm", metavar="unix:PATH",
                   help="take the SNP report from the SVSM attestation call (the vTPM "
                        "service, manifest v1) instead of ctpm's NV indices")
    a.add_argument("--manifest-version", type=int, choices=(0, 1), metavar="0|1",
                   help="with --svsm: the manifest asked for (default 0 when the challenge "
                        "carries ak_certify, else 1)")

    v = commands.add_parser("verify", help="verify composite evidence against a policy")
    v.add_argument("evidence", metavar="EVIDENCE.json")
    v.add_argument("--nonce", required=True, metavar="HEX")
    v.add_argument("--policy", metavar="FILE", help="policy TOML (docs/attestation.md); "
                                                    "default: the built-in strict policy")
    v.add_argument("--json", action="store_true", help="print the appraisal's claims")
    v.add_argument("--certify-secret", metavar="FILE",
                   help="the secret the challenge's AK-certification key was derived from "
                        "(manifest v0; `ctpm verifier challenge --certify-secret`)")


def _fail(command, message, status):
    print(f"ctpm: {command}: {message}", file=sys.stderr)
    return status


def _nonce(text):
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        return None
    return nonce if len(nonce) == 64 else None


def run_attest(args) -> int:
    ak_certify = None
    if args.challenge:
        try:
            with open(args.challenge, "rb") as f:
                challenge = json.load(f)
            if not isinstance(challenge, dict) or not isinstance(challenge.get("nonce"), str):
                raise ValueError('not {"nonce": HEX, ...}')
            ak_certify = challenge.get("ak_certify")
            if ak_certify is not None and not (isinstance(ak_certify, dict) and all(
                    isinstance(ak_certify.get(k), str)
                    for k in ("public", "duplicate", "in_sym_seed"))):
                raise ValueError("ak_certify is not {public, duplicate, in_sym_seed}")
        except OSError as e:
            return _fail("attest", f"cannot read {args.challenge}: {e.strerror}", 2)
        except ValueError as e:
            return _fail("attest", f"{args.challenge}: {e}", 2)
        if args.nonce and args.nonce != challenge["nonce"]:
            return _fail("attest", "--nonce differs from the challenge's nonce", 2)
        args.nonce = challenge["nonce"]
    nonce = _nonce(args.nonce or "")
    if nonce is None:
        return _fail("attest", "--nonce must be 64 bytes (128 hex digits)", 2)
    logs = {}
    for name in ("event_log", "ima_log"):
        path = getattr(args, name)
        if path:
            try:
                with open(path, "rb") as f:
                    logs[name] = f.read()
            except OSError as e:
                return _fail("attest", f"cannot read {path}: {e.strerror}", 2)
    # the TSS's own log lines would bury the one line that says what failed
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from .evidence import collect
    from .tpm import parse_selection
    try:
        parse_selection(args.pcrs)
    except ValueError as e:
        return _fail("attest", f"--pcrs: {e}", 2)
    snp = None
    if args.svsm:
        from ..svsm.client import SvsmClient
        try:
            with SvsmClient(args.svsm[5:] if args.svsm.startswith("unix:") else args.svsm) as c:
                version = args.manifest_version
                if version is None:
                    version = 0 if ak_certify else 1
                got = c.attest_vtpm(nonce, version)
        except Exception as e:
            return _fail("attest", f"{args.svsm}: {type(e).__name__}: {e}", 1)
        snp = (got.report, got.cert_table, got.manifest, version, "svsm")
    try:
        doc = collect(args.tcti, nonce, pcrs=args.pcrs, instance_uuid=args.uuid,
                      startup=args.startup, snp=snp, ak_certify=ak_certify, **logs)
    except Exception as e:      # TSS errors (tpm2_pytss.TSS2_Exception), a missing index...
        return _fail("attest", f"{args.tcti}: {type(e).__name__}: {e}", 1)
    text = json.dumps(doc, indent=1) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    tmp = args.output + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.output)
    except OSError as e:
        return _fail("attest", f"cannot write {args.output}: {e.strerror}", 1)
    return 0


def run_verify(args) -> int:
    from ..snp.errors import SnpError
    from .verify import AttestPolicy, ClockHistory, load_policy, verify_evidence
    nonce = _nonce(args.nonce)
    if nonce is None:
        return _fail("verify", "--nonce must be 64 bytes (128 hex digits)", 2)
    try:
        with open(args.evidence, "rb") as f:
            raw = f.read()
    except OSError as e:
        return _fail("verify", f"cannot read {args.evidence}: {e.strerror}", 2)
    try:
        policy = load_policy(args.policy) if args.policy else AttestPolicy()
    except ValueError as e:
        return _fail("verify", f"policy: {e}", 2)
    certifier = None
    if args.certify_secret:
        from .akcert import load_secret
        try:
            certifier = load_secret(args.certify_secret)
        except ValueError as e:
            return _fail("verify", str(e), 2)
    try:
        appraisal = verify_evidence(raw, nonce, policy, history=ClockHistory(),
                                    certifier=certifier)
    except SnpError as e:
        print(f"ctpm: refused: {e.check}: {e.message}", file=sys.stderr)
        return 1
    claims = appraisal.claims()
    if args.json:
        print(json.dumps({"verified": True, **claims}, indent=1))
        return 0
    s, t = claims["snp"], claims["vtpm"]
    root = "AMD" if s["root"] == "amd" else f"caller-trusted ARK {s['root'][8:24]}..."
    print(f"verified: {s['product']} VM (root {root}, provider {s['provider']}, VMPL "
          f"{s['vmpl']}) with a vTPM quote over {t['pcr_selection']}, policy "
          f"{claims['policy_id']}")
    print(f"  measurement {s['measurement']}")
    print(f"  EK name     {t['ek_name']}")
    print(f"  AK name     {t['ak_name']}" + (" (certified by a key wrapped to the EK)"
                                               if t["ak_binding"] == "ek-certify" else ""))
    print(f"  PCR digest  {t['pcr_digest']}")
    if t["event_log_pcrs"]:
        print(f"  event log   replayed to {' '.join(t['event_log_pcrs'])}")
    return 0
