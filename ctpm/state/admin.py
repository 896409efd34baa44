"""`ctpm state ...`: offline work on a state directory (the daemon must not be running; the
directory's lock says so).

    ctpm state rekey --state DIR [old key options] [--new-state-key FILE | ...| --decrypt]
    ctpm state check --state DIR [key options] [--state-anchor FILE]
    ctpm state anchor --state DIR [key options] --state-anchor FILE

`rekey` writes the whole state as a new snapshot under the new key (or none, with
--decrypt) and starts an empty journal; the state's id stays, so nothing else changes. `anchor` (re)binds a rollback anchor
(state/anchor.py) to the state as it is now: after a deliberate restore from a backup, or
to start using an anchor.
"""
import sys

from .errors import StoreError


def add_key_options(parser, prefix=""):
    """--state-key FILE / --state-key-fd N / --state-passphrase-fd N / -file FILE."""
    p, d = f"--{prefix}state-", prefix.replace("-", "_")
    parser.add_argument(p + "key", metavar="FILE", dest=d + "state_key",
                        help="encrypt the state with the 256-bit key in FILE (raw or hex)")
    parser.add_argument(p + "key-fd", metavar="N", type=int, dest=d + "state_key_fd",
                        help="... with the key read from file descriptor N")
    parser.add_argument(p + "passphrase-fd", metavar="N", type=int,
                        dest=d + "state_passphrase_fd",
                        help="... with a key derived (scrypt) from a passphrase read from N")
    parser.add_argument(p + "passphrase-file", metavar="FILE",
                        dest=d + "state_passphrase_file",
                        help="... with a key derived from the passphrase in FILE")
    parser.add_argument(p + "key-tpm", metavar="TCTI", dest=d + "state_key_tpm",
                        help="... with a key sealed to the TPM at TCTI (kept in "
                             "DIR/state-key.tpm)")
    parser.add_argument(p + "key-tpm-pcrs", metavar="SEL", dest=d + "state_key_tpm_pcrs",
                        help="the PCRs that key is sealed to (default sha256:7)")


def add_anchor_option(parser, required=False):
    parser.add_argument("--state-anchor", metavar="FILE", required=required,
                        help="refuse the state if it is older than this anchor (a file "
                             "outside the state directory), and keep the anchor up to date")


def register(commands):
    state = commands.add_parser("state", help="offline operations on a state directory")
    sub = state.add_subparsers(dest="state_command", metavar="OPERATION", required=True)
    rekey = sub.add_parser("rekey", help="re-encrypt the state under a new key or passphrase")
    rekey.add_argument("--state", metavar="DIR", required=True)
    add_key_options(rekey)
    add_key_options(rekey, prefix="new-")
    rekey.add_argument("--decrypt", action="store_true", help="store the state unencrypted")
    add_anchor_option(rekey)
    rekey.set_defaults(main=main_rekey)
    check = sub.add_parser("check", help="read the whole state; report damage or a wrong key")
    check.add_argument("--state", metavar="DIR", required=True)
    add_key_options(check)
    add_anchor_option(check)
    check.set_defaults(main=main_check)
    bind = sub.add_parser("anchor", help="bind a rollback anchor to the state as it is now")
    bind.add_argument("--state", metavar="DIR", required=True)
    add_key_options(bind)
    add_anchor_option(bind, required=True)
    bind.set_defaults(main=main_anchor)


def key_from(args, prefix=""):
    from .keys import StateKey
    given = [(n, getattr(args, prefix + n)) for n in ("state_key", "state_key_fd",
                                                       "state_passphrase_fd",
                                                       "state_passphrase_file",
                                                       "state_key_tpm")
             if getattr(args, prefix + n) is not None]
    if len(given) > 1:
        raise StoreError(f"only one {prefix.replace('_', ' ')}state key source, please")
    if not given:
        return None
    name, value = given[0]
    if name == "state_key":
        return StateKey.from_file(value)
    if name == "state_key_fd":
        return StateKey.from_fd(value)
    if name == "state_passphrase_fd":
        return StateKey.from_fd(value, passphrase=True)
    if name == "state_key_tpm":
        return StateKey.from_tpm(value, getattr(args, prefix + "state_key_tpm_pcrs"),
                                 args.state, new=bool(prefix))
    return StateKey.from_passphrase_file(value)


def _open(args, anchor=True):
    from .journal import DirStore
    store = DirStore(args.state, key=key_from(args),
                     anchor=args.state_anchor if anchor else None)
    try:
        if store.load_nv() is None:
            raise StoreError(f"{args.state} holds no TPM state")
    except BaseException:
        store.close()
        raise
    return store


def main_rekey(args) -> int:
    try:
        new = key_from(args, "new_")
        if new is None and not args.decrypt:
            raise StoreError("give the new key (--new-state-key, --new-state-key-fd, "
                             "--new-state-passphrase-fd, --new-state-passphrase-file) or "
                             "--decrypt")
        if new is not None and args.decrypt:
            raise StoreError("--decrypt and a new key exclude each other")
        store = _open(args)
        try:
            store.rekey(new)
        finally:
            store.close()
        from .tpmkey import SEALED
        import os
        if new is not None and new.committed is not None:
            new.committed()                 # state-key.tpm.new -> state-key.tpm
        elif args.state_key_tpm is not None:
            os.unlink(os.path.join(args.state, SEALED))     # no longer the state's key
    except StoreError as e:
        print(f"ctpm: state error: {e}", file=sys.stderr)
        return 1
    return 0


def main_check(args) -> int:
    try:
        store = _open(args)
        print(f"ctpm: {args.state}: intact, sequence number {store.durable_seq}, "
              f"generation {store.generation}, "
              f"{'encrypted' if store.key else 'not encrypted'}")
        store.close()
    except StoreError as e:
        print(f"ctpm: state error: {e}", file=sys.stderr)
        return 1
    return 0


def main_anchor(args) -> int:
    try:
        store = _open(args, anchor=False)
        try:
            store.bind_anchor(args.state_anchor)
        finally:
            store.close()
    except StoreError as e:
        print(f"ctpm: state error: {e}", file=sys.stderr)
        return 1
    print(f"ctpm: {args.state_anchor} anchors {args.state} at generation {store.generation}")
    return 0
