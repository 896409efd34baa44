"""A real `ctpm verifier serve` process for the service tests and bench/verifier.py: started
on port 0, its port read back from the ready line, stopped with SIGTERM; its stderr checked
for tracebacks."""
import contextlib
import os
import signal
import subprocess
import tempfile

from cryptography.hazmat.primitives import serialization

from ctpm.testing.process import _read_line, command, environment

AUDIENCE = "relying-party.test"


def write_policy(directory, sim, *, pcrs="sha256:0,1", policy_id="test-policy", extra=""):
    ark = os.path.join(directory, "ark.pem")
    with open(ark, "wb") as f:
        f.write(sim.ark.public_bytes(serialization.Encoding.PEM))
    path = os.path.join(directory, f"policy-{policy_id}.toml")
    with open(path, "w") as f:
        f.write(f'id = "{policy_id}"\n[snp]\ntrust_ark = ["{ark}"]\n{extra}\n'
                f'[tpm]\npcrs = "{pcrs}"\n')
    return path


def make_key(directory, curve="P-256"):
    path = os.path.join(directory, f"service-{curve}.pem")
    if not os.path.exists(path):
        subprocess.run(command("verifier", "keygen", path, "--curve", curve), check=True,
                       capture_output=True, env=environment())
    return path


class Service:
    def __init__(self, proc, url, stderr):
        self.proc, self.url, self._stderr = proc, url, stderr

    def log(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")


@contextlib.contextmanager
def run_service(policy, key, *args, timeout=20.0):
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        command("verifier", "serve", "--listen", "127.0.0.1:0", "--policy", policy, "--key",
                key, "--audience", AUDIENCE, *args),
        stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=environment())
    try:
        try:
            line = _read_line(proc, timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            stderr.seek(0)
            raise RuntimeError("the verifier did not start: "
                               + stderr.read().decode(errors="replace")) from None
        assert line.startswith("ctpm: ready verifier=http://"), line
        service = Service(proc, line.split("=", 1)[1], stderr)
        yield service
        assert "Traceback" not in service.log(), service.log()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        stderr.close()
