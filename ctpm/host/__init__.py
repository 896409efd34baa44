"""`ctpm host`: one process serving many independent TPM instances (one per VM).

- `server.py`: the host: instances (each a backend, its listeners, its state directory and
  limits), the directory of instance files, the control socket, SIGHUP reload.
- `control.py`: the control protocol's client side (no trio: `ctpm host add` and the warm
  `ctpm run --host` start fast).
- `warm.py`: `ctpm run --host unix:PATH`: bind, hand the sockets over, print the ready line.
- `cli.py`: the `ctpm host ...` subcommands (registered in ctpm/cli.py).
"""
