"""`ctpm token verify`: the relying party's check of a verifier token (tokens.verify_token).

Exit 0 and the claims as JSON; 1 and one line `ctpm: token refused: REASON: why`; 2 when the
JWKS cannot be read."""
import json
import sys


def add_parser(commands):
    p = commands.add_parser("token", help="check a verifier token (ctpm token verify)")
    sub = p.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    v = sub.add_parser("verify", help="verify a token as a relying party")
    v.add_argument("token", metavar="TOKEN", help="the JWT, @FILE, or - for stdin")
    v.add_argument("--jwks", metavar="FILE|URL", required=True,
                   help="the verifier's JWKS (its /jwks); keys come only from here")
    v.add_argument("--audience", metavar="X", required=True)
    v.add_argument("--uuid", metavar="U", help="the instance the token must be about")
    v.add_argument("--issuer", metavar="URL", help="the expected iss")
    v.add_argument("--leeway", metavar="SECONDS", type=float, default=30.0,
                   help="clock skew allowed on exp/nbf/iat (default 30)")
    v.set_defaults(main=run_verify)


def run_verify(args) -> int:
    from .tokens import TokenError, load_jwks, verify_token
    token = args.token
    try:
        if token == "-":
            token = sys.stdin.read()
        elif token.startswith("@"):
            with open(token[1:]) as f:
                token = f.read()
        jwks = load_jwks(args.jwks)
    except OSError as e:
        print(f"ctpm: {args.token[1:]}: {e.strerror}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"ctpm: {e}", file=sys.stderr)
        return 2
    try:
        claims = verify_token(token.strip(), jwks, audience=args.audience, uuid=args.uuid,
                              issuer=args.issuer, leeway=args.leeway)
    except TokenError as e:
        print(f"ctpm: token refused: {e.reason}: {e.message}", file=sys.stderr)
        return 1
    print(json.dumps(claims, indent=2, sort_keys=True))
    return 0
