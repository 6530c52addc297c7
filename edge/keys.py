"""`edge-keys`: CurveZMQ keys for links that leave the device (tcp), and how sockets use them.

    edge-keys --dir /etc/emotion-edge/curve                 # server + one client ("client")
    edge-keys --dir DIR --client dash --client recorder     # more named clients

Layout of a key dir (0700, every file 0600), in pyzmq's certificate format so
`zmq.auth.load_certificate` reads it:

    server.key  server.key_secret            the daemon (binds; CURVE server)
    <client>.key  <client>.key_secret        a sensor / subscriber (connects; CURVE client)
    authorized/<client>.key                  public keys the daemon's ZAP handler accepts

ipc:// links stay plain: their protection is the 0700 runtime directory. A socket with a
tcp:// endpoint and a key dir is secured with `secure_server` / `secure_client`; the server
side also runs `start_authenticator` (a ZAP handler thread), so a peer whose public key is not
in ``authorized/`` -- or one that speaks plain ZMTP -- completes no handshake and none of its
messages reach the socket.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER = "server"
DEFAULT_CLIENT = "client"
AUTHORIZED = "authorized"
ZAP_DOMAIN = b"emotion-edge"


class KeyDirError(ValueError):
    """A key dir that is missing a key or is readable by others."""


def uses_tcp(endpoints: Iterable[str]) -> bool:
    return any(e.startswith("tcp://") for e in endpoints)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def _certificate(public: bytes, secret: bytes | None) -> str:
    lines = ["#   emotion-edge CurveZMQ certificate (edge-keys)", "metadata", "curve"]
    lines.append(f'    public-key = "{public.decode("ascii")}"')
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def generate(key_dir: str | Path, clients: Iterable[str] = (DEFAULT_CLIENT,)) -> Path:
    """Create (or add to) a key dir: a server keypair, client keypairs, authorized/ publics.

    Existing keypairs are kept, so adding a client does not lock out the others."""
    root = Path(key_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    authorized = root / AUTHORIZED
    authorized.mkdir(exist_ok=True, mode=0o700)
    os.chmod(authorized, 0o700)
    for name in (SERVER, *clients):
        if not name or "/" in name or name.startswith("."):
            raise KeyDirError(f"bad key name {name!r}")
        secret_file = root / f"{name}.key_secret"
        if not secret_file.exists():
            public, secret = zmq.curve_keypair()
            _write_private(root / f"{name}.key", _certificate(public, None))
            _write_private(secret_file, _certificate(public, secret))
        if name != SERVER:
            public, _ = zmq.auth.load_certificate(root / f"{name}.key")
            _write_private(authorized / f"{name}.key", _certificate(public, None))
    return root


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyDirError(f"{path} is accessible by others (mode {mode:o}); chmod go= it")


def load_keypair(key_dir: str | Path, name: str) -> tuple[bytes, bytes]:
    root = Path(key_dir)
    secret_file = root / f"{name}.key_secret"
    if not secret_file.exists():
        raise KeyDirError(f"no key {name!r} in {root}; run edge-keys --dir {root}")
    _check_private(root)
    _check_private(secret_file)
    public, secret = zmq.auth.load_certificate(secret_file)
    if secret is None:
        raise KeyDirError(f"{secret_file} holds no secret key")
    return public, secret


def server_public_key(key_dir: str | Path) -> bytes:
    public, _ = zmq.auth.load_certificate(Path(key_dir) / f"{SERVER}.key")
    return public


def secure_server(sock: zmq.Socket[Any], key_dir: str | Path) -> None:
    """Make a binding socket a CURVE server (call before bind)."""
    public, secret = load_keypair(key_dir, SERVER)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def secure_client(sock: zmq.Socket[Any], key_dir: str | Path, name: str = DEFAULT_CLIENT) -> None:
    """Make a connecting socket a CURVE client of the key dir's server (call before connect)."""
    public, secret = load_keypair(key_dir, name)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public_key(key_dir)


def start_authenticator(ctx: zmq.Context[Any], key_dir: str | Path) -> ThreadAuthenticator:
    """A ZAP handler on `ctx` accepting only the public keys in ``key_dir/authorized``.

    Without one, libzmq lets any CURVE client that knows the server's public key in."""
    authorized = Path(key_dir) / AUTHORIZED
    if not authorized.is_dir():
        raise KeyDirError(f"{authorized} missing; run edge-keys --dir {key_dir}")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN.decode(), location=str(authorized))
    return auth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="key dir (created 0700)")
    parser.add_argument(
        "--client", action="append", help=f"client key name (default: {DEFAULT_CLIENT})"
    )
    args = parser.parse_args(argv)
    try:
        root = generate(args.dir, args.client or (DEFAULT_CLIENT,))
    except (OSError, KeyDirError) as exc:
        print(f"edge-keys: {exc}", file=sys.stderr)
        return 2
    for path in sorted(root.rglob("*.key")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
