"""A real one-machine SLURM cluster for the tests: munged, slurmctld and slurmd in a temporary directory.

Debian's ``slurm-wlm`` and ``munge`` packages provide the daemons (CI installs them, see ``.ci/run``).
Everything the cluster writes lives under one directory (config, state, spool, logs, the munge socket
and key), on ports picked free, so it never touches a system cluster and two test sessions never
collide. Clients find it through ``SLURM_CONF``. ``stop`` kills exactly the processes ``start`` made.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "scontrol")
START_TIMEOUT_S = 60


def missing_reason() -> str | None:
    """Why a cluster cannot start here, or None."""
    absent = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
    if absent:
        return (f"SLURM is not installed ({', '.join(absent)} not found): `apt-get install -y slurm-wlm munge` "
                "(CI does, see .ci/run)")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs (CI runs as root)"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.root / "jobcomp.txt"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, tune run) needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for d in ("state", "spool", "log", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        user = pwd.getpwuid(os.geteuid()).pw_name
        cpus = os.cpu_count() or 1
        r = self.root
        self.conf.write_text(f"""\
ClusterName=tunetest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
ReturnToService=2
MinJobAge=600
KillWait=30
SlurmdTimeout=60
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> None:
        self.write_config()
        r = self.root
        munge = r / "munge"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={munge}/munge.socket",
                               f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
                               f"--log-file={r}/log/munged.log", f"--seed-file={munge}/munged.seed"])
        self._wait(lambda: (munge / "munge.socket").exists(), "munged to create its socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run("scontrol", "ping").returncode == 0, "slurmctld to answer `scontrol ping`")
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(self.node_idle, "the node to be idle in `sinfo`")

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def _run(self, *command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), capture_output=True, text=True, env=self.env, timeout=timeout)

    def _wait(self, ready, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def node_idle(self) -> bool:
        state = self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
        return state == ["idle"]

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the daemons this cluster started (slurmd first, munged last) and any job left running."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self._run("scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name, timeout=10)
                # Let slurmd see its jobs end (KillWait is 30 s) so that no job step outlives it.
                self._wait(lambda: not self._run("squeue", "--noheader").stdout.strip(), "the jobs to end", timeout=45)
            except (OSError, subprocess.SubprocessError, RuntimeError):
                pass
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
