"""A real SLURM cluster on this machine for the launcher tests (munge + slurmctld + one slurmd per node).

Debian's `slurm-wlm` and `munge` are installed with apt-get when missing (root only), so a fresh CI machine gets
them too. Everything else lives in a temporary directory: a generated `slurm.conf` (nodes with 20 CPUs, about the
machine's memory and `Gres=gpu:2` backed by two empty files each, partition `debug`, no accounting), the munge key
and socket, state, per-node spool folders and logs. Client commands find the cluster through `SLURM_CONF`, which
`SlurmCluster.env` sets.

One node is `localhost`. Several nodes (`SlurmCluster(nodes=MULTI_NODES)`) are several slurmd daemons on this
machine, each started as `slurmd -N <node>` with its own `Port=` on its `NodeName` line, `NodeAddr=127.0.0.1` and
its own spool folder, pid file and log (`%n` in slurm.conf); their names must resolve to the loopback address
(DINOv2 takes the first node's name as torch.distributed's master address), so names that do not are added to
/etc/hosts as `127.0.0.1` (root only, once; the line says who added it).

Loopback only: every daemon is addressed at 127.0.0.1 and slurmd and the client commands bind to it
(`CommunicationParameters=NoInAddrAny`). slurmctld binds its port on the wildcard address (SLURM has no option for
it; a network namespace with only a loopback interface does not work: glibc's `getaddrinfo(AI_ADDRCONFIG)`, which
SLURM uses, then resolves nothing, not even "127.0.0.1").

    python tests/slurm_cluster.py [ROOT] [--nodes N]   # start a cluster, print `export SLURM_CONF=...`; Ctrl-C stops
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "localhost"
MULTI_NODES = ("eqcoh-node1", "eqcoh-node2")  # the two-node cluster; added to /etc/hosts as 127.0.0.1 if needed
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# dinov2-eqcoh test cluster (tests/slurm_cluster.py)"
PARTITION = "debug"  # the partition slurm/profiles/local.yaml names
# The node advertises 20 CPUs whatever the machine has (SlurmdParameters=config_overrides): DINOv2's own launcher
# asks for 10 CPUs per task (hard-coded in dinov2.utils.cluster), so 2 tasks need 20. Nothing is pinned
# (TaskPlugin=task/none), so the processes share the machine's real cores.
N_CPUS = 20
N_GPUS = 2


class SlurmUnavailable(RuntimeError):
    """SLURM could not be installed or started; the message says why (with the daemons' log tails)."""


NOT_ROOT = ("the suite's SLURM cluster installs slurm-wlm and munge with apt-get, may add its node names to /etc/hosts "
            "and runs munged, slurmctld and slurmd as root; this is not root, so the SLURM tests are skipped (CI runs "
            "them as root)")


def require_root() -> None:
    """pytest.skip with the reason when not root (a login node); as root a cluster that fails to start is an error."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip(NOT_ROOT)


def ensure_installed() -> None:
    """Install Debian's slurm-wlm and munge with apt-get when any daemon is missing (needs root)."""
    if all(shutil.which(d) for d in DAEMONS + ("sbatch", "scontrol")):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"SLURM is not installed and this is not root: run `apt-get install -y {' '.join(PACKAGES)}`"
        )
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"SLURM is not installed and there is no apt-get to install {' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmUnavailable(
            f"`{' '.join(install)}` failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        raise SlurmUnavailable(f"{' '.join(missing)} still missing after installing {' '.join(PACKAGES)}")


def _is_loopback_name(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET)
    except socket.gaierror:
        return False
    return bool(infos) and all(info[4][0].startswith("127.") for info in infos)


def ensure_loopback_names(names: tuple[str, ...]) -> None:
    """Make every node name resolve to 127.0.0.1 only: names that do not are appended to /etc/hosts (root)."""
    missing = [n for n in names if not _is_loopback_name(n)]
    if not missing:
        return
    if os.geteuid() != 0 or not os.access(HOSTS_FILE, os.W_OK):
        raise SlurmUnavailable(
            f"node name(s) {', '.join(missing)} do not resolve to 127.0.0.1 and {HOSTS_FILE} is not writable: "
            f"add `127.0.0.1 {' '.join(missing)}` to it"
        )
    with HOSTS_FILE.open("a") as f:
        f.write(f"127.0.0.1 {' '.join(missing)}  {HOSTS_MARK}\n")
    still = [n for n in missing if not _is_loopback_name(n)]
    if still:
        raise SlurmUnavailable(f"{', '.join(still)} still do not resolve to 127.0.0.1 only after editing {HOSTS_FILE}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class SlurmCluster:
    """munged, slurmctld and one slurmd per node, configured in `root` (a fresh temporary directory by default).

    Args:
        root: Folder for the configuration, state, spool and logs.
        nodes: Node names; one slurmd each (`slurmd -N <node>`), all at 127.0.0.1 with their own ports.
    """

    def __init__(self, root: str | Path | None = None, nodes: tuple[str, ...] = (NODE,)):
        if not nodes or len(set(nodes)) != len(nodes):
            raise ValueError(f"need one or more distinct node names, got {nodes!r}")
        self.nodes = tuple(nodes)
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="eqcoh_slurm_"))
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands (sbatch, squeue, scontrol) and for the jobs they submit.

        Jobs inherit it (sbatch exports the environment): gloo, the tests' torch.distributed backend, then uses the
        loopback interface whatever address the machine's hostname resolves to.
        """
        return dict(os.environ, SLURM_CONF=str(self.conf), GLOO_SOCKET_IFNAME="lo")

    # ---- configuration ----

    def _write_config(self) -> None:
        for sub in ("munge", "state", "log", *(f"spool/{n}" for n in self.nodes), *(f"gpus/{n}" for n in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        gres = []
        for node in self.nodes:
            for i in range(N_GPUS):  # empty files stand in for /dev/nvidia*
                gpu = self.root / "gpus" / node / f"gpu{i}"
                gpu.touch()
                gres.append(f"NodeName={node} Name=gpu File={gpu}\n")
        (self.root / "gres.conf").write_text("".join(gres))
        memory_mb = int(_memory_mb() * 0.9)  # every node advertises it: the nodes share the machine
        node_lines = "".join(
            f"NodeName={node} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={N_CPUS} RealMemory={memory_mb} "
            f"Gres=gpu:{N_GPUS} State=UNKNOWN\n"
            for node in self.nodes
        )
        host = socket.gethostname().split(".")[0]
        r = self.root
        self.conf.write_text(
            f"""# generated by tests/slurm_cluster.py
ClusterName=eqcohtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
CommunicationParameters=NoInAddrAny
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobRequeue=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
KillWait=2
MinJobAge=3600
InactiveLimit=0
SlurmdParameters=config_overrides
{node_lines}PartitionName={PARTITION} Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
"""
        )

    # ---- life cycle ----

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "ab")
        self._procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def start(self, timeout_s: float = 60) -> "SlurmCluster":
        """Install if needed, write the configuration, start the daemons and wait until every node is idle.

        On failure the daemons started so far are stopped again before the error is raised.
        """
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> "SlurmCluster":
        ensure_installed()
        if self.nodes != (NODE,):
            ensure_loopback_names(self.nodes)
        self._write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={m}/munge.key",
                f"--socket={self.munge_socket}",
                f"--pid-file={m}/munged.pid",
                f"--log-file={self.root}/log/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
        for node in self.nodes:
            self._spawn(f"slurmd.{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
        self._wait(
            lambda: all(self.node_state(n) in ("idle", "IDLE") for n in self.nodes),
            timeout_s,
            f"the node(s) {', '.join(self.nodes)} did not become idle",
        )
        return self

    def node_state(self, node: str | None = None) -> str:
        done = self.run(["sinfo", "-h", "-n", node or self.nodes[0], "-o", "%T"], check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stdout}{done.stderr}")
        return done

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{', '.join(dead)} exited while starting SLURM.\n{self.log_tails()}")
            if ready():
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"{what} within {timeout_s:.0f} s.\n{self.log_tails()}")

    def log_tails(self, n_lines: int = 20) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-n_lines:]
            parts.append(f"--- {log} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self, timeout_s: float = 30) -> None:
        """Cancel every job, wait for the node to drain, then stop the daemons this object started."""
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            self.run(["scancel", "--user", str(os.geteuid())], check=False)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        for name in reversed(list(self._procs)):  # slurmd daemons, slurmctld, munged : reverse start order
            p = self._procs.pop(name)
            if p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Start a test SLURM cluster on this machine (Ctrl-C stops it)")
    parser.add_argument("root", nargs="?", default=None, help="folder for config, state and logs (default: a temp dir)")
    parser.add_argument("--nodes", type=int, default=1, help=f"1: {NODE}; 2: {', '.join(MULTI_NODES)}")
    cli = parser.parse_args()
    if cli.nodes not in (1, len(MULTI_NODES)):
        parser.error(f"--nodes must be 1 or {len(MULTI_NODES)}")
    cluster = SlurmCluster(cli.root, nodes=MULTI_NODES if cli.nodes > 1 else (NODE,)).start()
    print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C stops the cluster", flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
