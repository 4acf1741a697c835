//! A single-node Kubernetes cluster on this machine, without docker: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, containerd,
//! kubelet and kube-proxy built from their own modules (`tests/k8s/build.sh`),
//! all inside one private network, mount and PID namespace with no link to
//! the machine's network. `meshctl cluster up|down|status|exec` and the
//! tests run it.
//!
//! - [`pki`]: certificates and kubeconfigs, made per run;
//! - [`config`]: the components' configuration files;
//! - [`node`]: the namespaces' first process, which prepares the node,
//!   runs the components and reaps orphans;
//! - [`images`]: OCI images built from local binaries, imported without a
//!   registry;
//! - [`dns`]: CoreDNS as the `kube-dns` Service.

pub mod config;
pub mod dns;
pub mod images;
pub mod node;
pub mod pki;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The node's address, on `lo` inside the namespace.
pub const NODE_IP: &str = "10.255.0.1";
/// The node's name.
pub const NODE_NAME: &str = "mesh-node";
/// Service addresses, routed to `lo` for kube-proxy's rules.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's address.
pub const API_SERVICE_IP: &str = "10.96.0.1";
/// The `kube-dns` Service's address.
pub const DNS_SERVICE_IP: &str = "10.96.0.10";
/// Pod addresses of the cluster.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Pod addresses of the node (its bridge).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The sandbox image, built locally from the `pause` binary.
pub const SANDBOX_IMAGE: &str = "mesh.local/pause:1";

/// Why a cluster step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// To what.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// The cluster cannot be set up as asked.
    #[error("{0}")]
    Setup(String),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// The result of a cluster step.
pub type Result<T> = std::result::Result<T, Error>;

/// Runs `cmd` to completion; its error names the command and its output.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: command.clone(),
        output: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        })
    }
}

/// Writes a file only its owner may read (keys, kubeconfigs).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io("write", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("protect", path, e))
}

/// A cluster's run folder and what it holds.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The run folder (certificates, logs, state, the node's pid).
    pub run: PathBuf,
}

/// Where the node's first process writes its pid.
fn pid_file(run: &Path) -> PathBuf {
    run.join("node.pid")
}

impl Cluster {
    /// The cluster whose run folder is `run` (running or not).
    pub fn at(run: &Path) -> Cluster {
        Cluster {
            run: run.to_owned(),
        }
    }

    /// The administrator's kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.run.join("admin.kubeconfig")
    }

    /// The pid of the namespaces' first process, if it runs.
    pub fn node_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(pid_file(&self.run))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// The folder of the Kubernetes binaries the run uses.
    pub fn bin_dir(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.run.join("bin-dir")).ok()?;
        Some(PathBuf::from(text.trim()))
    }

    /// A command that runs inside the cluster's namespaces, with `kubectl`
    /// and the other binaries on its PATH and the admin kubeconfig set.
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let pid = self
            .node_pid()
            .ok_or_else(|| Error::Setup(format!("no cluster runs in {}", self.run.display())))?;
        let path = format!(
            "{}:{}",
            self.bin_dir().unwrap_or_default().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "--target",
            &pid.to_string(),
            "--net",
            "--mount",
            "--pid",
            "--",
        ])
        .arg("env")
        .arg(format!("KUBECONFIG={}", self.kubeconfig().display()))
        .arg(format!("PATH={path}"))
        .args(args);
        Ok(cmd)
    }

    /// Runs `f` on a thread of its own that joined the cluster's network
    /// namespace (where the API server and the pods are): a client made
    /// there (kube-rs on a current-thread runtime) reaches them, while the
    /// rest of the process stays outside.
    pub fn in_network<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        use std::os::fd::AsRawFd;
        let pid = self
            .node_pid()
            .ok_or_else(|| Error::Setup(format!("no cluster runs in {}", self.run.display())))?;
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let ns = std::fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns with a valid namespace fd changes this
                    // thread's network namespace only.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(Error::io("join", &path, std::io::Error::last_os_error()));
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The API server's audit events so far (JSON, one per call and stage
    /// of the mesh-system service accounts: see [`config::audit_policy`]).
    pub fn audit_events(&self) -> Result<Vec<serde_json::Value>> {
        let path = node::audit_log(&self.run);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Kills the node's component `name` (`kube-apiserver`, `kubelet`, …)
    /// and waits until the node has started it again (a second later, as a
    /// service manager would): an outage as an upgrade or a crash makes.
    pub fn restart(&self, name: &str) -> Result<()> {
        let node = self
            .node_pid()
            .ok_or_else(|| Error::Setup(format!("no cluster runs in {}", self.run.display())))?;
        let old = component_pid(node, name)
            .ok_or_else(|| Error::Setup(format!("{name} does not run in the node")))?;
        // SAFETY: signalling a process the node started.
        unsafe { libc::kill(old, libc::SIGKILL) };
        wait(
            &format!("{name} started again"),
            Duration::from_secs(30),
            || component_pid(node, name).filter(|pid| *pid != old),
        )
        .map(drop)
    }

    /// Runs `args` inside the cluster; its standard output.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run_checked(&mut self.command(args)?)
    }

    /// `kubectl apply` of a YAML stream.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        use std::io::Write;
        let mut cmd = self.command(&["kubectl", "apply", "-f", "-"])?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("start", Path::new("kubectl"), e))?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(yaml.as_bytes())
            .map_err(|e| Error::io("write to", Path::new("kubectl"), e))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("wait for", Path::new("kubectl"), e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Command {
                command: "kubectl apply".into(),
                output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// Progress of `up`, for people.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// What `up` needs.
#[derive(Debug, Clone)]
pub struct Up {
    /// The run folder (made; removed by [`down`]).
    pub run: PathBuf,
    /// The Kubernetes binaries (and `pause`, `coredns`): what
    /// tests/k8s/build.sh prints.
    pub bin: PathBuf,
    /// The program whose `cluster node --run-dir R --bin-dir B` runs the
    /// node: meshctl.
    pub node_program: PathBuf,
}

/// Starts a cluster: certificates, the node's namespaces and components,
/// the sandbox image, cluster DNS; returns once the node is Ready and DNS
/// answers. A killed earlier run in the same folder is removed first.
pub fn up(opts: &Up, progress: Progress<'_>) -> Result<Cluster> {
    let run = opts.run.as_path();
    let started = Instant::now();
    if Cluster::at(run).node_pid().is_some() {
        return Err(Error::Setup(format!(
            "a cluster already runs in {} (meshctl cluster down first)",
            run.display()
        )));
    }
    down(run)?;
    let bin = prepare_run(run, &opts.bin)?;
    progress("certificates");
    pki::make(run)?;
    progress("node namespaces and components");
    start_node(run, &bin, &opts.node_program)?;
    let c = Cluster::at(run);
    wait_for_api_server(&c)?;
    progress("sandbox image");
    let image = images::Image {
        name: SANDBOX_IMAGE.into(),
        files: images::File::binary(&bin.join("pause"), "/pause"),
        entrypoint: vec!["/pause".into()],
    };
    images::import(&c, &[image])?;
    wait_for_node(&c)?;
    progress("cluster DNS (CoreDNS as kube-dns)");
    dns::deploy(&c, &bin)?;
    progress(&format!(
        "ready in {:.1} s",
        started.elapsed().as_secs_f32()
    ));
    Ok(c)
}

/// Checks the binaries are there, makes the run folder and records where
/// they are; returns their folder's full path.
fn prepare_run(run: &Path, bin: &Path) -> Result<PathBuf> {
    for b in [
        "kube-apiserver",
        "kubelet",
        "etcd",
        "kubectl",
        "pause",
        "coredns",
    ] {
        if !bin.join(b).exists() {
            return Err(Error::Setup(format!(
                "{b} is missing in {}: build the binaries with tests/k8s/build.sh",
                bin.display()
            )));
        }
    }
    std::fs::create_dir_all(run).map_err(|e| Error::io("create", run, e))?;
    let bin = std::fs::canonicalize(bin).map_err(|e| Error::io("find", bin, e))?;
    std::fs::write(run.join("bin-dir"), bin.display().to_string())
        .map_err(|e| Error::io("write", run, e))?;
    Ok(bin)
}

/// Waits until the API server is ready, or says why the node gave up.
fn wait_for_api_server(c: &Cluster) -> Result<()> {
    let ready = wait(
        &format!("the API server (see {}/log)", c.run.display()),
        Duration::from_secs(60),
        || {
            if c.node_pid().is_none() {
                return Some(false);
            }
            c.run(&["kubectl", "get", "--raw", "/readyz"])
                .ok()
                .filter(|o| o == "ok")
                .map(|_| true)
        },
    )?;
    if ready {
        return Ok(());
    }
    // The node gave up preparing (its log says why).
    let log = std::fs::read_to_string(c.run.join("node.log")).unwrap_or_default();
    Err(Error::Setup(format!(
        "the node process ended:\n{}",
        log.trim()
    )))
}

/// Waits until the node is Ready and the default service account exists
/// (pods cannot be created before).
fn wait_for_node(c: &Cluster) -> Result<()> {
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    wait("the node to be Ready", Duration::from_secs(60), || {
        let out = c
            .run(&["kubectl", "get", "node", NODE_NAME, "-o", ready])
            .ok()?;
        (out.trim() == "True").then_some(())
    })?;
    wait(
        "the default service account",
        Duration::from_secs(60),
        || {
            c.run(&["kubectl", "get", "serviceaccount", "default"])
                .ok()
                .map(drop)
        },
    )
}

/// Starts the node's first process in new namespaces, detached, and waits
/// until it wrote its pid.
fn start_node(run: &Path, bin: &Path, exe: &Path) -> Result<()> {
    let log = run.join("node.log");
    let out = std::fs::File::create(&log).map_err(|e| Error::io("create", &log, e))?;
    let err = out.try_clone().map_err(|e| Error::io("open", &log, e))?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
        "--",
    ])
    .arg(exe)
    .args(["cluster", "node", "--run-dir"])
    .arg(run)
    .arg("--bin-dir")
    .arg(bin)
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    // SAFETY: setsid in the child before exec, so the node outlives the
    // command that started it and its terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("start", Path::new("unshare"), e))?;
    let unshare = child.id();
    std::fs::write(run.join("unshare.pid"), unshare.to_string())
        .map_err(|e| Error::io("write", run, e))?;
    // The node is unshare's only child (PID 1 inside).
    let children = format!("/proc/{unshare}/task/{unshare}/children");
    let pid = wait("the node's namespaces", Duration::from_secs(10), || {
        std::fs::read_to_string(&children)
            .ok()?
            .split_whitespace()
            .next()?
            .parse::<i32>()
            .ok()
    })?;
    std::fs::write(pid_file(run), pid.to_string()).map_err(|e| Error::io("write", run, e))
}

/// Stops the cluster in `run` and removes every trace of it: its
/// processes (by ending the namespaces' first process), cgroups, mounts
/// (they live in its mount namespace) and files. Safe to repeat.
pub fn down(run: &Path) -> Result<()> {
    let c = Cluster::at(run);
    if let Some(pid) = c.node_pid() {
        // SAFETY: signalling the node process we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let gone = wait("the node to stop", Duration::from_secs(5), || {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
        if gone.is_err() {
            // SAFETY: as above; PID 1 of the namespace takes it all along.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Some(u) = std::fs::read_to_string(run.join("unshare.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    {
        // SAFETY: reap or end the unshare process we started.
        unsafe {
            libc::kill(u, libc::SIGKILL);
            libc::waitpid(u, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
    // The kernel frees a cgroup once its last task has exited, which may
    // trail the processes' end by a moment.
    let cgroups = node::cgroup_dirs(run, true);
    wait("the run's cgroups to go", Duration::from_secs(5), || {
        cgroups.iter().for_each(|d| remove_cgroup(d));
        cgroups.iter().all(|d| !d.exists()).then_some(())
    })?;
    if run.exists() {
        std::fs::remove_dir_all(run).map_err(|e| Error::io("remove", run, e))?;
    }
    // The bind-mount target this created on the host, if still empty.
    let _ = std::fs::remove_dir("/var/lib/kubelet");
    Ok(())
}

/// The run-folder prefix of clusters a process owns: `mesh-cluster-<pid>-`
/// (so the leftovers of a killed owner can be told from clusters in use).
pub fn owned_prefix() -> String {
    format!("mesh-cluster-{}-", std::process::id())
}

/// Removes clusters whose run folder names an owner that is gone
/// ([`owned_prefix`]), e.g. after a test was killed; returns their run
/// folders. Clusters started by hand (other folders) are left alone.
pub fn cleanup_leftovers() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return removed;
    };
    for p in procs.flatten() {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(at) = args
            .windows(3)
            .position(|w| w[0] == "node" && w[1] == "--run-dir")
        else {
            continue;
        };
        let run = PathBuf::from(&args[at + 2]);
        let owner = run
            .components()
            .filter_map(|c| c.as_os_str().to_str()?.strip_prefix("mesh-cluster-"))
            .find_map(|rest| rest.split('-').next()?.parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
            && down(&run).is_ok()
        {
            removed.push(run);
        }
    }
    removed
}

/// Removes a cgroup folder and the ones the kubelet made under it, deepest
/// first (a cgroup folder goes with rmdir once it has no tasks).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The pid of the node's child named `name` (as /proc/PID/stat names it).
fn component_pid(node: i32, name: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces, not `)`.
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            // comm is cut to 15 bytes (`kube-controller` of the manager).
            (ppid == node && comm == &name[..name.len().min(15)]).then_some(pid)
        })
}

/// Polls `check` every 100 ms until it gives a value or `within` passes.
pub fn wait<T>(what: &str, within: Duration, check: impl FnMut() -> Option<T>) -> Result<T> {
    mesh_runtime::poll::until(within, Duration::from_millis(100), check)
        .ok_or_else(|| Error::Timeout(what.to_owned()))
}
