"""A private single-node Slurm cluster for the job-script tests: slurmctld and slurmd started by hand
(no systemd, no munge) from a slurm.conf written into a fresh directory, on free ports, and stopped
by PID. Used by tests/slurm/test_jobs.py; by hand:

    python3 tests/slurm/cluster.py DIR      # starts it, prints the SLURM_CONF to export, runs until
                                            # Ctrl-C or SIGTERM, then stops the daemons
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

CONF = """\
# written by tests/slurm/cluster.py: one node, no authentication (auth/none, cred/none)
ClusterName=onelora-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser={user}
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=5
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# the node declares more CPUs than the machine has, so that several small jobs run at once
SlurmdParameters=config_overrides
MpiDefault=none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_env(conf):
    """The environment for Slurm commands talking to this cluster: SLURM_CONF set, and the variables
    of any Slurm job this test itself runs in removed, so that sbatch/srun do not inherit them."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "PMIX_"))}
    env["SLURM_CONF"] = conf
    return env


class Cluster:
    def __init__(self, workdir, cpus=8):
        self.dir = os.path.abspath(workdir)
        self.cpus = cpus
        self.procs = []
        self.spool_tmp = None

    def start(self, timeout=60):
        for tool in ("slurmctld", "slurmd", "sbatch", "sinfo", "scontrol"):
            if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
                raise ClusterError(f"{tool} not found: install Debian's slurmctld, slurmd and "
                                   "slurm-client (tests/run.sh does)")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "state"))
        spool = os.path.join(self.dir, "spool")
        if len(spool) > 60:  # slurmd puts unix sockets there (108-byte path limit)
            self.spool_tmp = spool = tempfile.mkdtemp(prefix="onelora-slurmd-")
        else:
            os.makedirs(spool)
        self.conf = os.path.join(self.dir, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(user=os.environ.get("USER", "root") if os.getuid() else "root",
                                ctld_port=free_port(), d_port=free_port(), dir=self.dir,
                                state=os.path.join(self.dir, "state"), spool=spool, cpus=self.cpus))
        self.env = slurm_env(self.conf)
        sbin = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        for name, cmd in (("slurmctld", ["slurmctld", "-D", "-i"]),
                          ("slurmd", ["slurmd", "-D", "-N", "localhost"])):
            log = open(os.path.join(self.dir, name + ".out"), "w")
            exe = shutil.which(cmd[0], path=sbin)
            p = subprocess.Popen([exe] + cmd[1:], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
            self.procs.append((name, p))
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            for name, p in self.procs:
                if p.poll() is not None:
                    raise ClusterError(f"{name} exited with status {p.returncode} at start:\n"
                                       + self.logs())
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True,
                               text=True, timeout=20)
            state = r.stdout.strip()
            if r.returncode == 0 and state == "idle":
                return self
            time.sleep(0.5)
        raise ClusterError(f"the node did not become idle within {timeout} s (sinfo: '{state}'):\n"
                           + self.logs())

    def logs(self, lines=15):
        text = []
        for name in ("slurmctld.out", "slurmd.out", "slurmctld.log", "slurmd.log"):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    tail = f.read().splitlines()[-lines:]
                text.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(text)

    def stop(self):
        """Cancels the jobs left in the queue (their processes belong to slurmstepd, not to the
        daemons), then stops the daemons this object started, by PID: SIGTERM, SIGKILL after 10 s."""
        if self.procs and all(p.poll() is None for _, p in self.procs):
            try:
                r = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True,
                                   text=True, timeout=20)
                jobs = r.stdout.split()
                if jobs:
                    subprocess.run(["scancel"] + jobs, env=self.env, timeout=20)
                    for _ in range(30):
                        r = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T"], env=self.env,
                                           capture_output=True, text=True, timeout=20)
                        if not set(r.stdout.split()) & {"RUNNING", "COMPLETING", "PENDING", "SUSPENDED"}:
                            break
                        time.sleep(0.5)
            except (subprocess.SubprocessError, OSError) as e:
                print(f"cluster: could not cancel the remaining jobs: {e}", file=sys.stderr)
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs = []
        if self.spool_tmp:
            shutil.rmtree(self.spool_tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    c = Cluster(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        c.start()
        print(f"export SLURM_CONF={c.conf}   # Ctrl-C stops the cluster", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
