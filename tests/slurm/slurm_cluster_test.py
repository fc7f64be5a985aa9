#!/usr/bin/env python3
"""A real two-node Slurm cluster on this machine, scheduling VRAM through gpu-manager.

Starts munged, slurmctld and two slurmd (`slurmd -N n1`, `-N n2`, each its own Port=: Debian
builds Slurm with MULTIPLE_SLURMD), each node with two GPUs made with mknod and its own
`gpumgr serve --simulate 2x24GiB`; gres.conf is what `gpumgr slurm conf` prints, plugstack.conf
what `gpumgr slurm plugstack` prints. Then checks, through srun and sbatch with --vram:
tasks land on both nodes and see the UUID of the GPU Slurm chose, the node's daemon lists the
lease under the Slurm job id while it runs, a task waits in the plugin while an outside
process holds its GPU's memory, and scancel, a time limit, a non-zero exit and a SIGKILL each
free the lease within a second. Everything is torn down at the end, pass or fail.

Usage: slurm_cluster_test.py GPUMGR_BIN PLUGIN_SO. Exit 77 (skipped) where it cannot run: not
root, Slurm or munge not installed, the plugin not built. Every wait has a deadline and says
what it waited for.
"""
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SKIP = 77
GIB = 1024**3
NODES = ("n1", "n2")


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


class Failure(Exception):
    pass


def wait_for(what, cond, timeout=20.0, interval=0.02):
    """Polls cond() until it returns something truthy; fails naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Failure(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def check(cond, message):
    if not cond:
        raise Failure(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, gpumgr, plugin):
        self.gpumgr = gpumgr
        self.plugin = plugin
        self.dir = tempfile.mkdtemp(prefix="gpumgr-slurm-")
        os.chmod(self.dir, 0o755)  # munged (user munge) must reach its folder
        self.procs = {}  # name -> Popen
        self.env = dict(os.environ, SLURM_CONF=self.path("etc/slurm.conf"))
        for k in list(self.env):
            if k.startswith("SLURM_") and k != "SLURM_CONF":
                del self.env[k]
        self.env.pop("GPUMGR_SOCKET", None)
        self.outside = None

    def path(self, rel):
        return os.path.join(self.dir, rel)

    def log(self, name):
        return open(self.path(f"log/{name}.log"), "a")

    # --- start -----------------------------------------------------------------------------

    def start(self):
        for d in ("etc", "log", "run", "state", "spool", "dev", "gpumgr", "out"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("out"), 0o777)
        self.start_munge()
        self.start_daemons()
        self.write_config()
        self.start_slurm()

    def start_munge(self):
        munge = pwd.getpwnam("munge")
        mdir = self.path("munge")
        os.makedirs(mdir, mode=0o700)
        with open(os.path.join(mdir, "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        for p in (mdir, os.path.join(mdir, "munge.key")):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        os.chmod(os.path.join(mdir, "munge.key"), 0o400)
        # The socket's folder: everyone may reach it, only munge may write it.
        rundir = self.path("munge-run")
        os.makedirs(rundir, mode=0o755)
        os.chmod(rundir, 0o755)
        os.chown(rundir, munge.pw_uid, munge.pw_gid)
        self.munge_socket = os.path.join(rundir, "munge.socket")
        self.procs["munged"] = subprocess.Popen(
            ["setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--clear-groups",
             "munged", "--foreground", f"--socket={self.munge_socket}",
             f"--key-file={mdir}/munge.key", f"--pid-file={mdir}/munged.pid",
             f"--log-file={mdir}/munged.log", f"--seed-file={mdir}/munged.seed"],
            stdout=self.log("munged-out"), stderr=subprocess.STDOUT)
        wait_for("munged's socket", lambda: os.path.exists(self.munge_socket)
                 or self.procs["munged"].poll() is not None, 10)
        check(self.procs["munged"].poll() is None, "munged exited: " + self.read_log(
            "munge/munged.log") + self.read_log("log/munged-out.log"))

    def start_daemons(self):
        self.sockets = {}
        self.procs_files = {}
        for n in NODES:
            sock = self.path(f"gpumgr/{n}.sock")
            procs = self.path(f"gpumgr/{n}-processes.txt")
            open(procs, "w").close()
            self.sockets[n] = sock
            self.procs_files[n] = procs
            self.start_daemon(n)
        for n in NODES:
            wait_for(f"the gpumgr daemon of {n}", lambda n=n: self.status(n, quiet=True), 15)
            # The node's GPUs, as device files Slurm can stat (nothing NVIDIA behind them).
            for i in range(2):
                dev = self.path(f"dev/{n}-gpu{i}")
                os.mknod(dev, 0o666 | 0o020000, os.makedev(195, (0 if n == "n1" else 2) + i))

    def start_daemon(self, n):
        env = dict(self.env, GPUMGR_SIMULATE_PROCESSES=self.procs_files[n])
        self.procs[f"gpumgr-{n}"] = subprocess.Popen(
            [self.gpumgr, "serve", "--socket", self.sockets[n], "--no-http", "--simulate",
             "2x24GiB", "--state-dir", self.path(f"gpumgr/{n}-state"), "--poll-interval", "0.05",
             "--max-concurrent-jobs", "16", "--socket-group", "nogroup"],
            stdout=self.log(f"gpumgr-{n}"), stderr=subprocess.STDOUT, env=env)

    def write_config(self):
        self.ctld_port = free_port()
        ports = {n: free_port() for n in NODES}
        gres_lines = []
        node_gres = {}
        for n in NODES:
            out = self.gpumgr_out("slurm", "conf", "--socket", self.sockets[n], "--node", n,
                                  "--file-pattern", self.path(f"dev/{n}-gpu%d"))
            gres_lines.append(out)
            frag = [ln[2:] for ln in out.splitlines() if ln.startswith(f"# NodeName={n} Gres=")]
            check(len(frag) == 1, f"no Gres= fragment in `gpumgr slurm conf` output:\n{out}")
            node_gres[n] = frag[0].split(" ", 1)[1]
            # 24 GiB at the daemon's 0.8 memory limit: 19 one-GiB shards per GPU.
            check(node_gres[n] == "Gres=gpu:2,shard:38", f"unexpected fragment {node_gres[n]}")
        with open(self.path("etc/gres.conf"), "w") as f:
            f.write("AutoDetect=off\n" + "".join(gres_lines))
        plugstack = self.gpumgr_out("slurm", "plugstack", "--socket",
                                    self.path("gpumgr/%n.sock")).strip()
        check(plugstack.split()[1] == os.path.realpath(self.plugin),
              f"plugstack names {plugstack.split()[1]}, the built plugin is {self.plugin}")
        with open(self.path("etc/plugstack.conf"), "w") as f:
            f.write(plugstack + "\n")
        host = socket.gethostname()
        nodes = "".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[n]} CPUs=4 "
            f"RealMemory=1000 {node_gres[n]} State=UNKNOWN\n" for n in NODES)
        d = self.dir
        conf = f"""ClusterName=gpumgrtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=verbose
PlugStackConfig={d}/etc/plugstack.conf
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu,shard
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=2
MessageTimeout=10
InactiveLimit=0
MinJobAge=5
SlurmdTimeout=60
{nodes}PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.path("etc/slurm.conf"), "w") as f:
            f.write(conf)

    def start_slurm(self):
        conf = self.path("etc/slurm.conf")
        self.procs["slurmctld"] = subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", conf], stdout=self.log("slurmctld-out"),
            stderr=subprocess.STDOUT, env=self.env)
        for n in NODES:
            os.makedirs(self.path(f"spool/{n}"), exist_ok=True)
            self.procs[f"slurmd-{n}"] = subprocess.Popen(
                ["slurmd", "-D", "-N", n, "-f", conf], stdout=self.log(f"slurmd-{n}-out"),
                stderr=subprocess.STDOUT, env=self.env)

        def idle():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise Failure(f"{name} exited with {p.returncode}")
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check_rc=False)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            return all(states.get(n) == "idle" for n in NODES)

        wait_for("both slurmd to register idle (slurmd accepted the gres.conf)", idle, 40, 0.2)
        for n in NODES:
            out = self.run("scontrol", "show", "node", n).stdout
            check("Gres=gpu:2,shard:38" in out, f"node {n} lacks its gres:\n{out}")

    # --- helpers ---------------------------------------------------------------------------

    def read_log(self, rel):
        try:
            with open(self.path(rel), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def run(self, *cmd, check_rc=True, timeout=30, **kw):
        out = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout,
                             **kw)
        if check_rc and out.returncode != 0:
            raise Failure(f"{' '.join(cmd)} exited {out.returncode}: {out.stdout}{out.stderr}")
        return out

    def gpumgr_out(self, *args):
        return self.run(self.gpumgr, *args).stdout

    def status(self, node, quiet=False):
        out = subprocess.run([self.gpumgr, "status", "--json", "--socket", self.sockets[node]],
                             capture_output=True, text=True, env=self.env, timeout=10)
        if out.returncode != 0:
            if quiet:
                return None
            raise Failure(f"gpumgr status of {node}: {out.stderr}")
        return json.loads(out.stdout)

    def leases(self, node):
        return {l["job_id"]: l for l in self.status(node)["leases"]}

    def waiters(self, node):
        return {w["job_id"]: w for w in self.status(node)["queue"]}

    def job_leases(self, job):
        """Every lease of a Slurm job, on every node: {job id: (node, lease)}."""
        found = {}
        for n in NODES:
            for jid, lease in self.leases(n).items():
                if jid.startswith(f"slurm-{job}."):
                    found[jid] = (n, lease)
        return found

    def task_script(self, name, code=0):
        """A task that writes what it sees, waits for a go file (with a deadline), exits."""
        out = self.path("out")
        return (
            f"echo $$ > {out}/{name}.$SLURMD_NODENAME.pid; "
            f"echo \"$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES $GPUMGR_LEASE_JOB_ID "
            f"$GPUMGR_LEASE_DEVICES $GPUMGR_LEASE_BYTES $GPUMGR_SLURM_GPUS\" "
            f"> {out}/{name}.$SLURMD_NODENAME.env; "
            f"for i in $(seq 600); do [ -e {out}/{name}.go ] && break; sleep 0.1; done; "
            f"exit {code}")

    def srun(self, name, *args, code=0, user=None):
        as_user = []
        if user:
            # Another user's job: its lease must be that user's.
            u = pwd.getpwnam(user)
            as_user = ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups"]
        return subprocess.Popen(
            [*as_user, "srun", "-J", name, *args, "bash", "-c", self.task_script(name, code)],
            cwd="/tmp",
            stdout=self.log(f"srun-{name}"), stderr=subprocess.STDOUT, env=self.env)

    def sbatch(self, name, *args, code=0):
        out = self.run("sbatch", "--parsable", "-J", name, "-o", self.path(f"log/{name}.out"),
                       *args, "--wrap", self.task_script(name, code)).stdout
        return int(out.strip().split(";")[0])

    def job_id(self, name):
        def find():
            out = self.run("squeue", "-h", "-a", "-n", name, "-o", "%i").stdout.split()
            return int(out[0]) if out else None
        return wait_for(f"job {name} in squeue", find, 15)

    def job_state(self, job):
        out = self.run("squeue", "-h", "-j", str(job), "-o", "%T", check_rc=False).stdout.strip()
        return out

    def seen(self, name, node):
        p = self.path(f"out/{name}.{node}.env")
        if not os.path.exists(p):
            return None
        with open(p) as f:
            text = f.read()
        return text.split() if text.endswith("\n") else None

    def task_pid(self, name, node):
        p = self.path(f"out/{name}.{node}.pid")
        try:
            with open(p) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def go(self, name):
        open(self.path(f"out/{name}.go"), "w").close()

    def script_outside(self, node, lines):
        tmp = self.procs_files[node] + ".new"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, self.procs_files[node])

    # --- stop ------------------------------------------------------------------------------

    def stop(self):
        ctld = self.procs.get("slurmctld")
        if ctld and ctld.poll() is None:
            try:
                for user in ("root", "nobody"):
                    subprocess.run(["scancel", "--full", "-u", user], env=self.env,
                                   capture_output=True, timeout=10)
                # Let the steps end while the daemons still run: their leases release cleanly.
                wait_for("squeue to empty", lambda: not self.run(
                    "squeue", "-h", check_rc=False).stdout.strip(), 15, 0.1)
            except (subprocess.TimeoutExpired, Failure):
                pass
        if self.outside and self.outside.poll() is None:
            self.outside.kill()
            self.outside.wait()
        order = ["slurmd-n1", "slurmd-n2", "slurmctld", "gpumgr-n1", "gpumgr-n2", "munged"]
        for name in order:
            p = self.procs.get(name)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name in order:
            p = self.procs.get(name)
            if not p:
                continue
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # slurmstepd processes of this cluster outlive slurmd only if something went wrong.
        left = self.processes_left()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def processes_left(self):
        """Processes whose command line or environment names this cluster's folder: tasks,
        and slurmstepd (which inherits SLURM_CONF from slurmd)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            text = b""
            for what in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{entry}/{what}", "rb") as f:
                        text += f.read()
                except OSError:
                    pass
            if self.dir.encode() in text:
                found.append(int(entry))
        return found


def check_landing(c):
    """srun --gres=shard:12 --vram=12GiB on both nodes; two jobs at once on n1, which Slurm
    must put on different GPUs (12 + 12 shards > 19), and each task sees its own GPU's UUID."""
    bad = c.run("srun", "--gres=shard:1", "--vram=twelve", "true", check_rc=False)
    check(bad.returncode != 0 and "--vram" in bad.stderr, f"srun --vram=twelve: {bad.stderr}")
    print("srun --vram=twelve says: " + bad.stderr.strip().replace("\n", " | "))
    succeeded_before = {n: c.status(n)["stats"]["jobs_succeeded"] for n in NODES}
    a = c.srun("land", "-N2", "--ntasks-per-node=1", "--gres=shard:12", "--vram=12GiB")
    b = c.srun("land2", "-w", "n1", "-N1", "--gres=shard:12", "--vram=12GiB", user="nobody")
    ja, jb = c.job_id("land"), c.job_id("land2")
    for name, n in (("land", "n1"), ("land", "n2"), ("land2", "n1")):
        wait_for(f"task of {name} on {n} to start", lambda: c.seen(name, n), 20)
    leases = {**c.job_leases(ja), **c.job_leases(jb)}
    check(set(leases) == {f"slurm-{ja}.0.0", f"slurm-{ja}.0.1", f"slurm-{jb}.0.0"},
          f"leases while running: {sorted(leases)}")
    devices_n1 = []
    for name, job in (("land", ja), ("land2", jb)):
        nodes = NODES if name == "land" else ("n1",)
        for n in nodes:
            node, uuid, lease_job, lease_devices, lease_bytes, slurm_gpus = c.seen(name, n)
            check(node == n, f"{name}: task on {n} reports node {node}")
            node_of, lease = leases[lease_job]
            check(node_of == n, f"{lease_job} leased on {node_of}, task runs on {n}")
            check(lease["bytes"] == 12 * GIB, f"{lease_job}: {lease['bytes']} bytes")
            uid = 0 if name == "land" else pwd.getpwnam("nobody").pw_uid
            check(lease["uid"] == uid, f"{lease_job}: owner uid {lease['uid']}, job's {uid}")
            check(lease["devices"] == [int(slurm_gpus)],
                  f"{lease_job}: leased device {lease['devices']}, Slurm gave {slurm_gpus}")
            check(uuid == f"SIM-{slurm_gpus}" and lease_devices == slurm_gpus,
                  f"{lease_job}: task sees CUDA_VISIBLE_DEVICES={uuid}, Slurm gave {slurm_gpus}")
            check(int(lease_bytes) == 12 * GIB, f"GPUMGR_LEASE_BYTES={lease_bytes}")
            # The task holds it (its memory is the lease's use), not slurmstepd.
            check(lease["pid"] == c.task_pid(name, n),
                  f"{lease_job}: holder pid {lease['pid']}, the task is {c.task_pid(name, n)}")
            if n == "n1":
                devices_n1.append(int(slurm_gpus))
    check(sorted(devices_n1) == [0, 1], f"both n1 jobs on GPUs {devices_n1}")
    c.go("land")
    c.go("land2")
    for p, name in ((a, "land"), (b, "land2")):
        check(p.wait(timeout=20) == 0, f"srun {name} exited {p.returncode}: "
              + c.read_log(f"log/srun-{name}.log"))
    wait_for("the landing leases to go", lambda: not c.job_leases(ja) and not c.job_leases(jb), 5)
    # Released by task_exit as succeeded (exit 0), not merely dropped with the connection.
    for n, jobs in (("n1", 2), ("n2", 1)):
        got = c.status(n)["stats"]["jobs_succeeded"] - succeeded_before[n]
        check(got == jobs, f"{n}: {got} leases released as succeeded, expected {jobs}")


def wait_lease(c, job, what):
    return wait_for(what, lambda: c.job_leases(job), 20)


def freed_within_a_second(c, job, name, node, timeout=20):
    """Waits for the task's process to end, then for its lease to go: at most a second."""
    pid = c.task_pid(name, node)
    check(pid, f"{name}: no task pid")
    wait_for(f"task {name} (pid {pid}) to end", lambda: not os.path.exists(f"/proc/{pid}"),
             timeout, 0.005)
    ended = time.monotonic()
    wait_for(f"the lease of {name} to be released", lambda: not c.job_leases(job), 5, 0.01)
    took = time.monotonic() - ended
    check(took < 1.0, f"{name}: lease released {took:.2f} s after the task ended")
    return took


def failed_count(c, node):
    return c.status(node)["stats"]["jobs_failed"]


def start_time_limited(c):
    """A batch job (sbatch --vram: its script is the task, job id slurm-J.batch.0) with a time
    limit of one minute, Slurm's shortest. slurmctld checks limits every 30 s, so it starts
    before everything else and is checked last."""
    jt = c.sbatch("limit", "-w", "n2", "--time=1", "--gres=shard:4", "--vram=4GiB")
    wait_for("the batch job's lease", lambda: f"slurm-{jt}.batch.0" in c.job_leases(jt), 20)
    wait_for("the batch task to start", lambda: c.seen("limit", "n2"), 20)
    node, lease = c.job_leases(jt)[f"slurm-{jt}.batch.0"]
    check(node == "n2" and lease["bytes"] == 4 * GIB, f"batch lease {node} {lease}")
    return jt


def check_ends(c, jt):
    """scancel, a time limit, a non-zero exit and a SIGKILL each free the lease within 1 s."""
    figures = {}
    failed_before = failed_count(c, "n1")
    p = c.srun("fail", "-w", "n1", "--gres=shard:2", "--vram=2GiB", code=3)
    jf = c.job_id("fail")
    wait_lease(c, jf, "the failing job's lease")
    wait_for("the failing task to start", lambda: c.seen("fail", "n1"), 20)
    c.go("fail")
    figures["exit 3"] = freed_within_a_second(c, jf, "fail", "n1")
    check(p.wait(timeout=20) == 3, f"srun of a task exiting 3 exited {p.returncode}")
    check(failed_count(c, "n1") == failed_before + 1, "a non-zero exit was not counted failed")

    p = c.srun("cancel", "-w", "n1", "--gres=shard:2", "--vram=2GiB")
    jc = c.job_id("cancel")
    wait_lease(c, jc, "the cancelled job's lease")
    wait_for("the task to be cancelled to start", lambda: c.seen("cancel", "n1"), 20)
    c.run("scancel", str(jc))
    figures["scancel"] = freed_within_a_second(c, jc, "cancel", "n1")
    p.wait(timeout=20)

    p = c.srun("killed", "-w", "n1", "--gres=shard:2", "--vram=2GiB")
    jk = c.job_id("killed")
    wait_lease(c, jk, "the killed job's lease")
    wait_for("the task to be killed to start", lambda: c.seen("killed", "n1"), 20)
    os.kill(c.task_pid("killed", "n1"), signal.SIGKILL)
    figures["SIGKILL"] = freed_within_a_second(c, jk, "killed", "n1")
    check(p.wait(timeout=20) != 0, "srun of a SIGKILLed task exited 0")

    figures["time limit"] = freed_within_a_second(c, jt, "limit", "n2", timeout=100)
    wait_for("the time-limited job to leave squeue", lambda: not c.job_state(jt), 20)
    return figures


def check_memory_wait(c):
    """An outside process holds most of both GPUs of n1: the task waits in the plugin (squeue:
    running; the daemon: waiting with its Slurm job id) and starts when the memory frees."""
    c.outside = subprocess.Popen(["sleep", "300"])
    c.script_outside("n1", [f"0 {c.outside.pid} 10GiB", f"1 {c.outside.pid} 10GiB"])
    wait_for("the outside use to count", lambda: all(
        d["foreign_bytes"] >= 10 * GIB for d in c.status("n1")["devices"]), 10)
    p = c.srun("waits", "-w", "n1", "--gres=shard:12", "--vram=12GiB")
    job = c.job_id("waits")
    wid = f"slurm-{job}.0.0"
    wait_for("the task to wait in the daemon's queue", lambda: wid in c.waiters("n1"), 20)
    check(c.job_state(job) == "RUNNING", f"squeue shows {c.job_state(job)} while it waits")
    time.sleep(0.5)  # what a wrong plugin would do in this time: start the task anyway
    check(c.seen("waits", "n1") is None, "the task started while its GPU's memory was taken")
    check(not c.job_leases(job), "a lease was granted while the memory was taken")
    c.script_outside("n1", [])
    wait_for("the task to start once the memory freed", lambda: c.seen("waits", "n1"), 20)
    check(wid in c.leases("n1"), "the started task holds no lease")
    c.go("waits")
    check(p.wait(timeout=20) == 0, "the task that waited failed: "
          + c.read_log("log/srun-waits.log"))
    c.outside.kill()
    c.outside.wait()

    # Cancelled while it waits: the waiter goes too.
    c.script_outside("n1", ["0 1 10GiB", "1 1 10GiB"])
    wait_for("the outside use to count again", lambda: all(
        d["foreign_bytes"] >= 10 * GIB for d in c.status("n1")["devices"]), 10)
    p = c.srun("waitcancel", "-w", "n1", "--gres=shard:12", "--vram=12GiB")
    job = c.job_id("waitcancel")
    wid = f"slurm-{job}.0.0"
    wait_for("the second task to wait", lambda: wid in c.waiters("n1"), 20)
    c.run("scancel", str(job))
    wait_for("the cancelled waiter to leave the daemon's queue",
             lambda: wid not in c.waiters("n1"), 10)
    p.wait(timeout=20)
    check(not c.job_leases(job), "a cancelled waiter got a lease")
    c.script_outside("n1", [])


def check_any_of_its_gpus(c):
    """A task given both GPUs of n1 waits for room on either: an outside process leaves more
    room on GPU 0 than on GPU 1 (neither enough); GPU 1 frees first, and the task starts there
    rather than waiting for the GPU that had more room."""
    c.outside = subprocess.Popen(["sleep", "300"])
    c.script_outside("n1", [f"0 {c.outside.pid} 10GiB", f"1 {c.outside.pid} 12GiB"])
    wait_for("the outside use to count", lambda: [
        d["foreign_bytes"] for d in c.status("n1")["devices"]] == [10 * GIB, 12 * GIB], 10)
    p = c.srun("anygpu", "-w", "n1", "--gres=gpu:2", "--vram=12GiB")
    job = c.job_id("anygpu")
    wid = f"slurm-{job}.0.0"
    waiter = wait_for("the two-GPU task to wait", lambda: c.waiters("n1").get(wid), 20)
    check(waiter.get("allowed_devices") == [0, 1],
          f"the waiter may use devices {waiter.get('allowed_devices')}, Slurm gave 0,1")
    c.script_outside("n1", [f"0 {c.outside.pid} 10GiB"])
    seen = wait_for("the task to start once GPU 1 freed", lambda: c.seen("anygpu", "n1"), 20)
    _, uuid, lease_job, lease_devices, _, slurm_gpus = seen
    check(lease_job == wid and lease_devices == "1" and uuid == "SIM-1",
          f"the task runs on {uuid} (lease devices {lease_devices}), expected GPU 1")
    check(slurm_gpus == "0,1", f"GPUMGR_SLURM_GPUS={slurm_gpus}, Slurm gave 0,1")
    check(c.leases("n1")[wid]["devices"] == [1], "the lease is not on GPU 1")
    c.go("anygpu")
    check(p.wait(timeout=20) == 0, "the two-GPU task failed: " + c.read_log("log/srun-anygpu.log"))
    c.outside.kill()
    c.outside.wait()
    c.script_outside("n1", [])


def check_shards_and_nested(c):
    """Without --vram, shards ask for shards x unit. An srun inside an `sbatch --vram` script
    runs under the script's lease (it would otherwise wait for its own parent's memory)."""
    p = c.srun("shards", "-w", "n1", "--gres=shard:3")
    job = c.job_id("shards")
    wait_for("the shards-only task to start", lambda: c.seen("shards", "n1"), 20)
    leases = c.job_leases(job)
    check(list(leases) == [f"slurm-{job}.0.0"], f"shards-only leases: {list(leases)}")
    check(leases[f"slurm-{job}.0.0"][1]["bytes"] == 3 * GIB, "3 shards are not 3 GiB")
    c.go("shards")
    check(p.wait(timeout=20) == 0, "the shards-only task failed")

    # A whole GPU (--gres=gpu:1): Slurm names it in SLURM_STEP_GPUS too.
    got = c.run("srun", "-w", "n1", "--gres=gpu:1", "--vram=4GiB", "bash", "-c",
                "echo $CUDA_VISIBLE_DEVICES $GPUMGR_SLURM_GPUS $SLURM_STEP_GPUS "
                "$GPUMGR_LEASE_BYTES").stdout.split()
    check(len(got) == 4 and got[0] == f"SIM-{got[1]}" and got[1] == got[2]
          and int(got[3]) == 4 * GIB, f"--gres=gpu:1 --vram=4GiB: the task sees {got}")

    out = c.path("out/nested")
    jn = c.run("sbatch", "--parsable", "-w", "n2", "--gres=shard:12", "--vram=12GiB",
               "-o", c.path("log/nested.out"), "--wrap",
               f"echo $CUDA_VISIBLE_DEVICES > {out}.outer; srun bash -c "
               f"'echo $CUDA_VISIBLE_DEVICES $GPUMGR_LEASE_JOB_ID > {out}.inner'").stdout
    jn = int(jn.strip())
    wait_for("the nested job to finish", lambda: not c.job_state(jn), 30, 0.1)
    with open(out + ".outer") as f:
        outer = f.read().split()
    with open(out + ".inner") as f:
        inner = f.read().split()
    check(outer[0].startswith("SIM-"), f"batch script sees {outer}")
    check(inner == [outer[0], f"slurm-{jn}.batch.0"], f"the inner step sees {inner}")


def check_daemon_restart(c):
    """The node's daemon killed with SIGKILL and started again while a task holds its lease:
    slurmstepd (the holder) reattaches by itself, the task never notices, and its release at
    the end counts as succeeded on the new daemon."""
    p = c.srun("restart", "-w", "n1", "--gres=shard:2", "--vram=2GiB")
    job = c.job_id("restart")
    before = wait_lease(c, job, "the lease of the task across a daemon restart")
    wait_for("the task to start", lambda: c.seen("restart", "n1"), 20)
    c.procs["gpumgr-n1"].kill()
    c.procs["gpumgr-n1"].wait(timeout=15)
    restarted = time.monotonic()
    c.start_daemon("n1")
    wait_for("the restarted daemon of n1", lambda: c.status("n1", quiet=True), 15)
    after = c.job_leases(job)
    check(after.keys() == before.keys(), f"after the restart the leases are {after}")
    (jid, (_, lease)), = after.items()
    check(lease["pid"] == next(iter(before.values()))[1]["pid"],
          f"the restored lease's holder changed: {lease}")
    wait_for("slurmstepd to reattach", lambda: "reattached job '" + jid + "'" in
             c.read_log("log/gpumgr-n1.log"), 10, 0.01)
    took = time.monotonic() - restarted
    succeeded = c.status("n1")["stats"]["jobs_succeeded"]
    c.go("restart")
    check(p.wait(timeout=30) == 0, "the task failed across the daemon restart")
    wait_for("the lease to be released", lambda: not c.job_leases(job), 5, 0.01)
    check(c.status("n1")["stats"]["jobs_succeeded"] == succeeded + 1,
          "the task's release after the restart did not count as succeeded")
    return took


def check_stepd_killed(c):
    """slurmstepd itself killed: the daemon sees the lease's connection close."""
    p = c.srun("stepd", "-w", "n1", "--gres=shard:2", "--vram=2GiB")
    job = c.job_id("stepd")
    lease = wait_lease(c, job, "the lease of the step whose slurmstepd is killed")
    wait_for("the task to start", lambda: c.seen("stepd", "n1"), 20)
    # The lease's holder is the task; its connection is slurmstepd's, the task's parent.
    holder = next(iter(lease.values()))[1]["pid"]
    check(holder == c.task_pid("stepd", "n1"), f"the lease's holder is pid {holder}")
    with open(f"/proc/{holder}/stat") as f:
        stepd = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{stepd}/comm") as f:
        comm = f.read().strip()
    check(comm == "slurmstepd", f"the task's parent is {comm} (pid {stepd}), not slurmstepd")
    os.kill(stepd, signal.SIGKILL)
    killed = time.monotonic()
    wait_for("the lease of the killed slurmstepd to go", lambda: not c.job_leases(job), 5, 0.01)
    took = time.monotonic() - killed
    check(took < 1.0, f"lease released {took:.2f} s after slurmstepd was killed")
    c.go("stepd")  # its task, orphaned, ends on its own
    c.run("scancel", str(job), check_rc=False)
    wait_for("the job of the killed slurmstepd to leave squeue", lambda: not c.job_state(job),
             30, 0.1)
    p.wait(timeout=20)
    return took


def check_no_daemon(c):
    """No daemon on the node: the task fails with a message naming the socket."""
    c.procs["gpumgr-n2"].send_signal(signal.SIGTERM)
    c.procs["gpumgr-n2"].wait(timeout=15)
    out = c.run("srun", "-w", "n2", "--gres=shard:1", "--vram=1GiB", "true", check_rc=False)
    check(out.returncode != 0, "a task ran on a node without a daemon")
    text = out.stdout + out.stderr
    check(c.sockets["n2"] in text and "gpumgr serve" in text,
          f"the failure does not name the socket and how to start the daemon:\n{text}")
    print("no daemon, the task says: " + out.stderr.strip().replace("\n", " | "))
    # With the plugin argument `optional`: the task runs unmanaged (Slurm's own index), warned.
    with open(c.path("etc/plugstack.conf")) as f:
        line = f.read().strip()
    with open(c.path("etc/plugstack.conf"), "w") as f:
        f.write(line + " optional\n")
    out = c.run("srun", "-w", "n2", "--gres=shard:1", "--vram=1GiB", "bash", "-c",
                "echo visible=$CUDA_VISIBLE_DEVICES", check_rc=False)
    check(out.returncode == 0, f"optional: the task failed: {out.stdout}{out.stderr}")
    check("visible=0" in out.stdout or "visible=1" in out.stdout,
          f"optional: the task does not see Slurm's GPU: {out.stdout}")
    check("running without a lease" in out.stderr and c.sockets["n2"] in out.stderr,
          f"optional: no warning naming the socket: {out.stderr}")
    print("no daemon, optional: " + out.stderr.strip().replace("\n", " | "))


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    gpumgr, plugin = sys.argv[1], sys.argv[2]
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens
    if os.geteuid() != 0:
        skip("needs root (munged, slurmd, mknod)")
    for tool in ("slurmctld", "slurmd", "srun", "sbatch", "munged", "setpriv"):
        if shutil.which(tool) is None:
            skip(f"{tool} not installed (scripts/install-deps.sh installs Slurm and munge)")
    if not os.path.exists(plugin):
        skip(f"{plugin} not built (no slurm/spank.h when the build was configured)")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        skip("no munge user")
    started = time.monotonic()
    c = Cluster(gpumgr, plugin)
    ok = False
    try:
        c.start()
        print(f"cluster up in {time.monotonic() - started:.1f} s")
        jt = start_time_limited(c)
        check_landing(c)
        print("landing: ok")
        check_memory_wait(c)
        print("memory wait: ok")
        check_any_of_its_gpus(c)
        print("a two-GPU allocation waits for either GPU: ok")
        figures = check_ends(c, jt)
        check_shards_and_nested(c)
        print("shards and nested steps: ok")
        print(f"daemon restart under a running task: reattached "
              f"{check_daemon_restart(c) * 1000:.0f} ms after the new daemon started")
        figures["slurmstepd SIGKILL"] = check_stepd_killed(c)
        print("lease freed after the task ended: " +
              ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in figures.items()))
        for n in NODES:
            check(not c.leases(n) and not c.waiters(n), f"{n}: something left leased")
        check_no_daemon(c)
        print("no daemon: ok")
        ok = True
    except Exception:
        traceback.print_exc()
        for rel in ("log/slurmctld.log", "log/slurmd-n1.log", "log/slurmd-n2.log",
                    "log/gpumgr-n1.log", "log/gpumgr-n2.log"):
            print(f"--- {rel} (tail)\n{c.read_log(rel)[-2500:]}")
    finally:
        left = c.stop()
        if left:
            print(f"FAIL: processes left behind: {left}")
            ok = False
        if ok or not os.environ.get("GPUMGR_SLURM_KEEP"):
            shutil.rmtree(c.dir, ignore_errors=True)
        else:
            print(f"kept {c.dir}")
    print(f"{'PASS' if ok else 'FAIL'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
