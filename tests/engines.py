"""Docker engines of their own for tests and benchmarks: a `dockerd` on its own socket (or TCP
port with TLS), data root, exec root and pid file, given the simulator image from the default
engine with `docker save | docker load`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import attrs

DEFAULT_ENGINE_URL = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@attrs.frozen
class TlsFiles:
    """PEM files: the authority, and a certificate with its key signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path, name: str, ca: TlsFiles | None = None) -> TlsFiles:
    """A certificate for `127.0.0.1` (server and client use) signed by `ca`, or a new authority
    with one when `ca` is None; written under `folder` with `openssl`."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    if ca is None:
        ca_key, ca_cert = folder / f"{name}-ca-key.pem", folder / f"{name}-ca.pem"
        openssl("genrsa", "-out", str(ca_key), "2048")
        openssl(
            "req", "-new", "-x509", "-days", "2", "-key", str(ca_key), "-out", str(ca_cert),
            "-subj", f"/CN={name} authority",
        )  # fmt: skip
    else:
        ca_key, ca_cert = ca.ca.with_name(ca.ca.name.replace("-ca.pem", "-ca-key.pem")), ca.ca
    key, csr, cert = folder / f"{name}-key.pem", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth, clientAuth\n",
        encoding="utf-8",
    )
    openssl("genrsa", "-out", str(key), "2048")
    openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl(
        "x509", "-req", "-days", "2", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-extfile", str(ext),
    )  # fmt: skip
    return TlsFiles(ca_cert, cert, key)


class PrivateEngine:
    """A Docker engine of its own, under `root` (keep it short: a socket path is at most 107
    bytes), listening on its socket and, with `tls`, on `tcp://127.0.0.1:<port>`."""

    def __init__(
        self, root: Path, image: str, *, port: int | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.root = root
        self.image = image
        self.socket = root / "docker.sock"
        self.port = port
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment that points the `docker` command at this engine."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    @property
    def url(self) -> str:
        """The URL the server is given: the TCP one when listening on a port, else the socket."""
        return f"tcp://127.0.0.1:{self.port}" if self.port else f"unix://{self.socket}"

    async def start(self) -> None:
        """Start `dockerd` and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "dockerd.log").open("ab")
        args = [
            "dockerd", f"--host=unix://{self.socket}", f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}", f"--pidfile={self.root / 'docker.pid'}",
            "--bridge=none", "--iptables=false", "--ip6tables=false",
        ]  # fmt: skip
        if self.port is not None:
            args.append(f"--host=tcp://127.0.0.1:{self.port}")
        if self.tls is not None:
            args += [
                "--tlsverify", f"--tlscacert={self.tls.ca}", f"--tlscert={self.tls.cert}",
                f"--tlskey={self.tls.key}",
            ]  # fmt: skip
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (a daemon: started, not awaited)
            args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        for _ in range(300):
            if await self.docker("info", check=False) == 0:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the private engine did not start: see {self.root / 'dockerd.log'}")

    async def stop(self) -> None:
        """Stop `dockerd` (SIGTERM, then SIGKILL after a minute), and unmount what it left
        mounted under its folder (an engine killed earlier leaves its data root mounted), so
        the folder can be removed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        unmount_below(self.root)

    async def restart(self) -> None:
        """Stop and start again on the same folders."""
        await self.stop()
        await self.start()

    async def load_image(self) -> None:
        """Copy the image from the default engine into this one."""
        save = await asyncio.create_subprocess_exec(
            "docker", "save", self.image, stdout=subprocess.PIPE
        )
        out, _ = await save.communicate()
        load = await asyncio.create_subprocess_exec(
            "docker", "load", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=self.env
        )
        await load.communicate(out)
        if save.returncode or load.returncode:
            raise RuntimeError(f"could not move {self.image} into the private engine")

    async def docker(self, *args: str, check: bool = True) -> int:
        """Run a `docker` command against this engine; its exit code."""
        proc = await asyncio.create_subprocess_exec(
            "docker", *args, env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        code = await proc.wait()
        if check and code:
            raise RuntimeError(f"docker {' '.join(args)} failed ({code})")
        return code

    async def output(self, *args: str) -> str:
        """A `docker` command's standard output against this engine."""
        proc = await asyncio.create_subprocess_exec(
            "docker", *args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        return out.decode()


def unmount_below(root: Path) -> None:
    """Unmount everything mounted below `root`, deepest first."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    for point in sorted({m.split()[1] for m in mounts if len(m.split()) > 1}, reverse=True):
        if point.startswith(f"{root}/"):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
