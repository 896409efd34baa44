"""`ctpm verify-ek`: check that an SNP report anchors the EK (and AK) a TPM presents.

Input: the evidence index's bytes (`tpm2_nvread 0x01400001 -C o -o evidence.bin`), or a
report, a manifest and its version given separately (e.g. from the SVSM attestation); the
verifier's nonce; the EK (and AK) public read from the TPM (`tpm2_readpublic -c 0x81010001
-o ek.pub`). Exit 0: the report verifies with REPORT_DATA = SHA-512(nonce || manifest) and the
keys match the manifest; 1: refused, one line naming the check; 2: unusable input.
"""
import sys


def add_parser(commands):
    from ..snp.verify_cli import add_snp_options
    p = commands.add_parser(
        "verify-ek", help="verify that an SNP report anchors a TPM's EK (and AK)",
        description="Verify the SNP anchor of a ctpm ephemeral or SVSM vTPM: the whole SNP "
                    "report verification, REPORT_DATA = SHA-512(nonce || manifest), and the "
                    "EK/AK the TPM presents equal to the manifest's (by Name).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--evidence", metavar="FILE",
                     help="the evidence NV index 0x01400001, as tpm2_nvread writes it")
    src.add_argument("--report", metavar="FILE", help="the report (with --manifest)")
    p.add_argument("--manifest", metavar="FILE", help="the manifest the report binds")
    p.add_argument("--manifest-version", metavar="N", type=int, choices=(0, 1),
                   help="0: the RSA EK's TPMT_PUBLIC (coconut-svsm); 1: ctpm's (default "
                        "with --evidence: what it says)")
    p.add_argument("--nonce", metavar="HEX", required=True,
                   help="the verifier's 64-byte nonce (the request written to 0x01400002)")
    p.add_argument("--ek", metavar="FILE",
                   help="the RSA EK public from the TPM (TPM2B_PUBLIC or TPMT_PUBLIC)")
    p.add_argument("--ak", metavar="FILE", help="the AK public from the TPM (manifest v1)")
    p.add_argument("--ek-ca", metavar="PEM",
                   help="require an EK certificate in the manifest issued by a CA of this "
                        "bundle (passthrough: the TPM vendor's)")
    p.add_argument("--require-activation", action="store_true",
                   help="require the manifest's record that the TPM opened a credential for "
                        "its EK and AK (passthrough)")
    add_snp_options(p)
    p.add_argument("--json", action="store_true")
    return p


def run(args) -> int:
    from ..snp.verify_cli import guarded
    return guarded("verify-ek", _run, args)


def _run(args) -> int:
    from ..snp.verify_cli import _Unusable, _hex, _read, print_verified, snp_inputs
    from .anchor import decode_evidence, verify_anchor

    nonce = _hex(args.nonce, 64, "--nonce")
    table = None
    if args.evidence:
        try:
            ev = decode_evidence(_read(args.evidence))
        except ValueError as e:
            raise _Unusable(f"--evidence {args.evidence}: {e}") from None
        report, manifest, version, table = ev.report, ev.manifest, ev.manifest_version, \
            ev.cert_table
        if args.manifest_version is not None and args.manifest_version != version:
            raise _Unusable(f"--manifest-version {args.manifest_version}: the evidence holds "
                            f"a version {version} manifest")
        provider = ev.provider
    else:
        if not args.manifest or args.manifest_version is None:
            raise _Unusable("--report needs --manifest FILE and --manifest-version N")
        report, manifest, version = _read(args.report), _read(args.manifest), \
            args.manifest_version
        provider = None
    verifier, kwargs = snp_inputs(args, report, cert_table=table)
    ek = _read(args.ek) if args.ek else None
    ak = _read(args.ak) if args.ak else None
    cas = None
    if args.ek_ca:
        from .credential import load_ca_bundle
        try:
            cas = load_ca_bundle(args.ek_ca)
        except (OSError, ValueError) as e:
            raise _Unusable(f"--ek-ca {args.ek_ca}: {e}") from None
    anchored = verify_anchor(report, nonce, manifest, version, ek_public=ek, ak_public=ak,
                             require_activation=args.require_activation, ek_cas=cas,
                             verifier=verifier, **kwargs)
    extra = {"manifest": f"v{version}", "ek_name": anchored.ek_name.hex(),
             "ek_checked": ek is not None}
    if anchored.ak_name:
        extra["ak_name"] = anchored.ak_name.hex()
        extra["ak_checked"] = ak is not None
    if provider:
        extra["provider"] = provider
    if anchored.identity.activation is not None:
        extra["activation"] = anchored.identity.activated()
    if cas is not None:
        extra["ek_certificate"] = "verified"
    print_verified(anchored.snp, args.json, extra)
    if ek is None:
        print("ctpm: verify-ek: warning: no --ek given: the TPM's own EK was not compared",
              file=sys.stderr)
    return 0
