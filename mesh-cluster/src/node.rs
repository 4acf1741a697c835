//! The cluster's node: the first process of its network, mount and PID
//! namespaces. It prepares the node (its address on `lo`, the service
//! route, forwarding, the host's sysctls shadowed, the kubelet's folder,
//! a cgroup root in every v1 hierarchy), starts the components, reaps
//! every orphan, and stops them when told; when it exits the kernel ends
//! whatever is left in the namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{
    CLUSTER_CIDR, Error, NODE_IP, NODE_NAME, Result, SERVICE_CIDR, config, pki, run_checked,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The cgroup root of a run (one folder in every v1 hierarchy).
pub fn cgroup_root(run: &Path) -> String {
    let id = run
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("/mesh-{id}")
}

/// The folders the run's cgroup root is in: one per v1 hierarchy, and
/// with `unified` the hybrid v2 one too (runc makes its cgroups there as
/// well; the kubelet needs none made for it there).
pub fn cgroup_dirs(run: &Path, unified: bool) -> Vec<PathBuf> {
    let root = cgroup_root(run);
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| (unified || e.file_name() != "unified") && e.path().is_dir())
        .map(|e| e.path().join(root.trim_start_matches('/')))
        .collect()
}

fn write(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::io("write", Path::new(path), e))
}

/// The node's network and mounts, inside the namespaces.
fn prepare(run: &Path) -> Result<()> {
    run_checked(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    run_checked(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]))?;
    run_checked(Command::new("ip").args(["route", "add", SERVICE_CIDR, "dev", "lo"]))?;
    write("/proc/sys/net/ipv4/ip_forward", "1")?;
    write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")?;
    // The kubelet writes these; they are the host's, so it writes copies.
    let shadows = run.join("sysctl");
    std::fs::create_dir_all(&shadows).map_err(|e| Error::io("create", &shadows, e))?;
    for sysctl in [
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/panic_on_oops",
    ] {
        let real = format!("/proc/sys/{sysctl}");
        let copy = shadows.join(sysctl.replace('/', "_"));
        let value = std::fs::read(&real).map_err(|e| Error::io("read", Path::new(&real), e))?;
        std::fs::write(&copy, value).map_err(|e| Error::io("write", &copy, e))?;
        bind(&copy, Path::new(&real))?;
    }
    let kubelet = run.join("kubelet");
    for d in [&kubelet, Path::new("/var/lib/kubelet")] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    bind(&kubelet, Path::new("/var/lib/kubelet"))?;
    for d in [
        "log",
        "etcd",
        "containerd/root",
        "containerd/state",
        "cni/net.d",
        "volume-plugins",
        "pods",
    ] {
        let d = run.join(d);
        std::fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
    }
    // cgroup v1: the kubelet's root exists in every hierarchy; cpuset
    // needs its CPUs and memory nodes before a task may join.
    for dir in cgroup_dirs(run, false) {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let parent = dir.parent().expect("a hierarchy");
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read(parent.join(f)) {
                std::fs::write(dir.join(f), v).map_err(|e| Error::io("write", &dir.join(f), e))?;
            }
        }
    }
    Ok(())
}

fn bind(from: &Path, to: &Path) -> Result<()> {
    run_checked(Command::new("mount").arg("--bind").arg(from).arg(to)).map(drop)
}

/// The API server's audit policy, in the run folder.
const AUDIT_POLICY: &str = "audit-policy.yaml";

/// Where the API server writes its audit events (JSON lines).
pub(crate) fn audit_log(run: &Path) -> std::path::PathBuf {
    run.join("log").join("audit.log")
}

/// kube-apiserver: RBAC and the Node authorizer, the run's certificates
/// and service-account keys, etcd on loopback; the mesh's calls audited
/// ([`config::audit_policy`]).
fn apiserver(run: &Path, bin: &Path, pki: &dyn Fn(&str) -> String) -> Command {
    let mut apiserver = Command::new(bin.join("kube-apiserver"));
    apiserver.args([
        "--etcd-servers=http://127.0.0.1:2379".to_owned(),
        format!("--advertise-address={NODE_IP}"),
        "--secure-port=6443".into(),
        format!("--tls-cert-file={}", pki("apiserver.crt")),
        format!("--tls-private-key-file={}", pki("apiserver.key")),
        format!("--client-ca-file={}", pki("ca.crt")),
        format!("--service-account-key-file={}", pki("sa.pub")),
        format!("--service-account-signing-key-file={}", pki("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--authorization-mode=Node,RBAC".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        format!(
            "--kubelet-client-certificate={}",
            pki("apiserver-kubelet-client.crt")
        ),
        format!(
            "--kubelet-client-key={}",
            pki("apiserver-kubelet-client.key")
        ),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        // The node's name resolves nowhere (no DNS leaves the namespace).
        "--kubelet-preferred-address-types=InternalIP".into(),
        format!("--audit-policy-file={}", run.join(AUDIT_POLICY).display()),
        format!("--audit-log-path={}", audit_log(run).display()),
    ]);
    apiserver
}

/// Each component's command line.
fn components(run: &Path, bin: &Path) -> Vec<(&'static str, Command)> {
    let p = pki::dir(run);
    let pki = |f: &str| p.join(f).display().to_string();
    let kubeconfig = |n: &str| run.join(format!("{n}.kubeconfig")).display().to_string();
    let tool = |n: &str| Command::new(bin.join(n));
    let mut etcd = tool("etcd");
    etcd.arg("--data-dir").arg(run.join("etcd")).args([
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=default=http://127.0.0.1:2380",
        "--quota-backend-bytes=1073741824",
    ]);
    let apiserver = apiserver(run, bin, &pki);
    let cm = kubeconfig("controller-manager");
    let mut controllers = tool("kube-controller-manager");
    controllers.args([
        format!("--kubeconfig={cm}"),
        format!("--authentication-kubeconfig={cm}"),
        format!("--authorization-kubeconfig={cm}"),
        format!("--cluster-signing-cert-file={}", pki("ca.crt")),
        format!("--cluster-signing-key-file={}", pki("ca.key")),
        format!("--root-ca-file={}", pki("ca.crt")),
        format!("--service-account-private-key-file={}", pki("sa.key")),
        "--use-service-account-credentials=true".into(),
        "--controllers=*".into(),
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={CLUSTER_CIDR}"),
        "--node-cidr-mask-size=24".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--bind-address=127.0.0.1".into(),
        "--leader-elect=false".into(),
    ]);
    let sc = kubeconfig("scheduler");
    let mut scheduler = tool("kube-scheduler");
    scheduler.args([
        format!("--kubeconfig={sc}"),
        format!("--authentication-kubeconfig={sc}"),
        format!("--authorization-kubeconfig={sc}"),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
    ]);
    let mut containerd = Command::new("containerd");
    containerd.arg("--config").arg(run.join("containerd.toml"));
    let mut kubelet = tool("kubelet");
    kubelet
        .arg(format!("--config={}", run.join("kubelet.yaml").display()))
        .arg(format!("--kubeconfig={}", kubeconfig("kubelet")))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={NODE_IP}"));
    let mut proxy = tool("kube-proxy");
    proxy.arg(format!(
        "--config={}",
        run.join("kube-proxy.yaml").display()
    ));
    vec![
        ("etcd", etcd),
        ("kube-apiserver", apiserver),
        ("kube-controller-manager", controllers),
        ("kube-scheduler", scheduler),
        ("containerd", containerd),
        ("kubelet", kubelet),
        ("kube-proxy", proxy),
    ]
}

/// Starts a component, its output appended to its log.
fn start(run: &Path, name: &str, mut cmd: Command) -> Result<Child> {
    let log = run.join("log").join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| Error::io("open", &log, e))?;
    let err = file.try_clone().map_err(|e| Error::io("open", &log, e))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::io("start", Path::new(name), e))?;
    tracing::info!(component = name, pid = child.id(), "started");
    Ok(child)
}

/// Runs as the namespaces' first process until SIGTERM (or SIGINT).
pub fn run(run: &Path, bin: &Path) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
    prepare(run)?;
    let files = [
        ("containerd.toml", config::containerd(run)),
        ("cni/net.d/10-mesh.conflist", config::cni(run)),
        ("kubelet.yaml", config::kubelet(run, &cgroup_root(run))),
        ("kube-proxy.yaml", config::kube_proxy(run)),
        (AUDIT_POLICY, config::audit_policy()),
    ];
    for (name, text) in files {
        let path = run.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    // Every component runs until the node stops; one that exits is
    // started again a second later, as a service manager would (the
    // controller manager and scheduler give up if they start before the
    // API server has made its roles).
    let mut children: Vec<(&'static str, Child)> = Vec::new();
    for (name, cmd) in components(run, bin) {
        children.push((name, start(run, name, cmd)?));
    }
    tracing::info!("node up");
    let mut restarts: Vec<(&'static str, Instant)> = Vec::new();
    while !STOP.load(Ordering::SeqCst) {
        // Reap every orphan the namespace hands us.
        loop {
            let mut status = 0;
            // SAFETY: waitpid with WNOHANG on any child.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(i) = children.iter().position(|(_, c)| c.id() as i32 == pid) {
                let (name, _) = children.remove(i);
                tracing::warn!(
                    component = name,
                    pid,
                    status,
                    "exited; starting it again in 1 s"
                );
                restarts.push((name, Instant::now() + Duration::from_secs(1)));
            }
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = restarts.drain(..).partition(|(_, at)| *at <= now);
        restarts = later;
        for (name, _) in due {
            if let Some((_, cmd)) = components(run, bin).into_iter().find(|(n, _)| *n == name) {
                children.push((name, start(run, name, cmd)?));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("stopping");
    for (_, c) in children.iter().rev() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        // SAFETY: waitpid with WNOHANG on any child.
        if unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } < 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
