//! A test world of network namespaces with no link to the machine's root
//! namespace: a "node" namespace holding a bridge, and "pods" (and external
//! hosts) attached to it by veth pairs created directly inside them. Service
//! VIPs are routed from pods to the bridge, where a counting rule drops them:
//! a packet that escapes capture goes nowhere and is counted.
//! Everything (namespaces, links, rules, processes) is removed on drop, also
//! when a test fails.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Doing, Error, LOG_ENV, Result};

/// The pod network.
pub const POD_NET: &str = "10.250.0";
/// The service VIP range, routed to the bridge and dropped there.
pub const VIP_CIDR: &str = "10.251.0.0/16";
/// The IPv6 pod network (unique local addresses; the node is `::1` on it),
/// for IPv6-only hosts ([`World::host6`]); nothing outside the world has it.
pub const POD_NET6: &str = "fd00:250:";
/// IPv6 service VIPs, routed and counted like [`VIP_CIDR`].
pub const VIP_CIDR6: &str = "fd00:251::/64";

static WORLDS: AtomicUsize = AtomicUsize::new(0);

/// Runs `cmd` to completion: (exit code, stdout), or (-1, the reason) when
/// it could not start — a failure callers report like any other exit.
pub(crate) fn output(mut cmd: Command) -> (i32, String) {
    match cmd.output() {
        Ok(out) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        Err(e) => (-1, format!("cannot run {:?}: {e}", cmd.get_program())),
    }
}

fn run(args: &[&str]) -> Result<()> {
    let command = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .doing(|| format!("run {command}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command,
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs a command; whether it succeeded (for what a machine may lack).
fn try_run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when this process may build namespaces and iptables rules.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Removes the namespaces (and what runs in them, and their hosts files)
/// of worlds whose process is gone, e.g. after a `kill -9`. Returns the
/// namespaces removed.
pub fn cleanup_leftovers() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return vec![] };
    let mut removed = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = ns
            .strip_prefix('m')
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_namespace(ns);
        removed.push(ns.to_owned());
    }
    removed
}

/// Kills what runs in `ns`, deletes it and its hosts file.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(ns));
}

/// A set of namespaces; removed on drop.
pub struct World {
    /// Prefix of every namespace and link name of this world.
    pub id: String,
    /// The node namespace (bridge, pilot, the counting drop rule).
    pub node: String,
    namespaces: Vec<String>,
    processes: Vec<Child>,
    hosts: usize,
    names: Vec<(String, IpAddr)>,
    /// Where the standard error of started processes goes (a file per
    /// process); inherited when `None` or when MESH_TESTBED_STDERR=inherit.
    pub logs: Option<std::path::PathBuf>,
    /// No namespaces: hosts are addresses on loopback (127.10.0.N) and
    /// processes run as the current user (the demo without root).
    pub loopback: bool,
    /// The node has IPv6 (its address and counting rule): [`World::host6`].
    pub ipv6: bool,
}

/// The loopback flavour's host network (127.10.0.N; .1 is pilot's).
pub const LOOPBACK_NET: &str = "127.10.0";

impl World {
    /// A node namespace with its bridge; needs root.
    pub fn new() -> Result<World> {
        if !is_root() {
            return Err(Error::Unexpected(
                "network namespaces and iptables rules need root: run as root, or use the loopback world".into(),
            ));
        }
        // m<pid>-<n>: the owner's pid, so leftovers of a killed run can
        // be told from worlds in use (see [`cleanup_leftovers`]).
        let id = format!(
            "m{}-{}",
            std::process::id(),
            WORLDS.fetch_add(1, Ordering::SeqCst)
        );
        let node = format!("{id}-node");
        let mut w = World {
            id,
            node: node.clone(),
            namespaces: vec![],
            processes: vec![],
            hosts: 0,
            names: vec![],
            logs: None,
            loopback: false,
            ipv6: false,
        };
        w.add_ns(&node)?;
        run(&["ip", "-n", &node, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{POD_NET}.1/24"),
            "dev",
            "br0",
        ])?;
        run(&["ip", "-n", &node, "link", "set", "br0", "up"])?;
        let drop = |iptables, vips| {
            let mut args = vec!["ip", "netns", "exec", &node, iptables];
            args.extend(["-t", "raw", "-A", "PREROUTING", "-d", vips, "-j", "DROP"]);
            args
        };
        run(&drop("iptables", VIP_CIDR))?;
        // IPv6, where the machine has it: IPv4 tests do not depend on it.
        let node6 = format!("{POD_NET6}:1/64");
        w.ipv6 = try_run(&[
            "ip", "-n", &node, "addr", "add", &node6, "dev", "br0", "nodad",
        ]) && try_run(&drop("ip6tables", VIP_CIDR6));
        Ok(w)
    }

    /// A world without namespaces, for users without root: every host is
    /// an address on loopback and nothing is isolated or captured.
    pub fn loopback() -> World {
        World {
            id: format!(
                "l{}-{}",
                std::process::id(),
                WORLDS.fetch_add(1, Ordering::SeqCst)
            ),
            node: String::new(),
            namespaces: vec![],
            processes: vec![],
            hosts: 0,
            names: vec![],
            logs: None,
            loopback: true,
            ipv6: false,
        }
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        run(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        self.write_hosts(name)
    }

    /// Names every namespace resolves (`ip netns exec` mounts
    /// /etc/netns/NS/hosts over /etc/hosts), as cluster DNS would: the
    /// service names to their VIPs.
    pub fn set_names(&mut self, names: &[(&str, IpAddr)]) -> Result<()> {
        if self.loopback {
            return Ok(()); // Apps name services through their explicit proxy.
        }
        self.names = names.iter().map(|(n, ip)| ((*n).to_owned(), *ip)).collect();
        for ns in &self.namespaces {
            self.write_hosts(ns)?;
        }
        Ok(())
    }

    fn write_hosts(&self, ns: &str) -> Result<()> {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (n, ip) in &self.names {
            text.push_str(&format!("{ip} {n}\n"));
        }
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("hosts"), text))
            .doing(|| format!("write {}/hosts", dir.display()))
    }

    /// Namespaces of this world.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Removes everything of this world now (for a Ctrl-C handler that
    /// cannot wait for the owner to drop it).
    pub fn remove_by_id(id: &str) {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let ns = line.split_whitespace().next().unwrap_or_default();
            if ns.starts_with(&format!("{id}-")) {
                remove_namespace(ns);
            }
        }
    }

    /// Adds a host on the bridge; returns its namespace name and address.
    pub fn host(&mut self, name: &str) -> Result<(String, Ipv4Addr)> {
        self.hosts += 1;
        let n = self.hosts as u8 + 1;
        if self.loopback {
            return Ok((String::new(), Ipv4Addr::new(127, 10, 0, n)));
        }
        let ip = Ipv4Addr::new(10, 250, 0, n);
        let ns = self.attach(
            name,
            &format!("{ip}/24"),
            &[VIP_CIDR, &format!("{POD_NET}.1")],
        )?;
        Ok((ns, ip))
    }

    /// A host with only an IPv6 address (`fd00:250::N`) on the bridge; the
    /// IPv6 VIP range is routed to the node, as [`World::host`] does for
    /// IPv4.
    pub fn host6(&mut self, name: &str) -> Result<(String, std::net::Ipv6Addr)> {
        if self.loopback {
            return Err(Error::Unexpected(
                "IPv6 hosts live in the network-namespace world".into(),
            ));
        }
        self.hosts += 1;
        let n = self.hosts as u16 + 1;
        let ip = std::net::Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, n);
        let ns = self.attach(
            name,
            &format!("{ip}/64"),
            &[VIP_CIDR6, &format!("{POD_NET6}:1")],
        )?;
        Ok((ns, ip))
    }

    /// A namespace for host `name` with `eth0` (address `cidr`) on the
    /// bridge, and `[vips, via]`: the VIP range routed to the node, so
    /// connect() succeeds and capture can see it.
    fn attach(&mut self, name: &str, cidr: &str, vip_route: &[&str; 2]) -> Result<String> {
        let ns = format!("{}-{name}", self.id);
        self.add_ns(&ns)?;
        let peer = format!("v{}-{}", self.id, self.hosts);
        let node = self.node.as_str();
        run(&[
            "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            node,
        ])?;
        // No duplicate address detection: IPv6 addresses work at once.
        let mut addr = vec!["ip", "-n", &ns, "addr", "add", cidr, "dev", "eth0"];
        if cidr.contains(':') {
            addr.push("nodad");
        }
        run(&addr)?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        run(&[
            "ip", "-n", node, "link", "set", &peer, "master", "br0", "up",
        ])?;
        let [vips, via] = vip_route;
        run(&["ip", "-n", &ns, "route", "add", vips, "via", via])?;
        Ok(ns)
    }

    /// Starts a process in namespace `ns` (as `uid` when given); it is
    /// killed when the world is dropped.
    pub fn spawn(
        &mut self,
        ns: &str,
        uid: Option<u32>,
        args: &[&str],
        stdout: Stdio,
    ) -> Result<&mut Child> {
        let program = std::path::Path::new(args[0])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(if self.loopback { args[0] } else { "ip" });
        let args = if self.loopback {
            &args[1..]
        } else {
            cmd.args(["netns", "exec", ns]);
            args
        };
        if let (Some(u), false) = (uid, self.loopback) {
            cmd.args([
                "setpriv",
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
            ]);
        }
        let stderr = match &self.logs {
            Some(dir) if std::env::var("MESH_TESTBED_STDERR").as_deref() != Ok("inherit") => {
                let path = dir.join(format!("{ns}-{program}-{}.log", self.processes.len()));
                std::fs::File::create(path).map_or(Stdio::inherit(), Stdio::from)
            }
            _ => Stdio::inherit(),
        };
        cmd.args(args).stdout(stdout).stderr(stderr);
        cmd.env(LOG_ENV.0, LOG_ENV.1);
        let child = cmd.spawn().doing(|| format!("start {program} in {ns}"))?;
        let at = self.processes.len();
        self.processes.push(child);
        Ok(&mut self.processes[at])
    }

    /// Starts a mesh process (it logs `ready` on stdout when it serves)
    /// and waits for it; the rest of its output is read and dropped. Its
    /// pid.
    pub fn spawn_ready(&mut self, ns: &str, uid: Option<u32>, args: &[&str]) -> Result<u32> {
        let child = self.spawn(ns, uid, args, Stdio::piped())?;
        let pid = child.id();
        let mut lines = crate::Lines::new(child.stdout.take().expect("piped"));
        lines.wait_for("ready", std::time::Duration::from_secs(30))?;
        lines.discard_rest();
        Ok(pid)
    }

    /// Kills the process `pid` this world started (SIGKILL) and reaps it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.processes.iter().position(|p| p.id() == pid) {
            let mut p = self.processes.remove(i);
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Runs a command in `ns` to completion; returns (exit code, stdout),
    /// or (-1, the reason) when it could not start.
    pub fn exec(&self, ns: &str, args: &[&str]) -> (i32, String) {
        output(self.command(ns, args))
    }

    /// A command that runs in `ns` (directly, in a loopback world).
    pub fn command(&self, ns: &str, args: &[&str]) -> Command {
        if self.loopback {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(args);
            c
        }
    }

    /// Packets to the VIP range that escaped capture and reached the node
    /// (`None` in a loopback world: nothing is captured there).
    pub fn escaped(&self) -> Result<Option<u64>> {
        (!self.loopback).then(|| self.escaped_packets()).transpose()
    }

    /// Packets to the VIP ranges (IPv4 and IPv6) that escaped capture and
    /// reached the node.
    pub fn escaped_packets(&self) -> Result<u64> {
        let families = if self.ipv6 { 2 } else { 1 };
        [("iptables", VIP_CIDR), ("ip6tables", VIP_CIDR6)]
            .into_iter()
            .take(families)
            .map(|(iptables, vips)| {
                let list = [iptables, "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"];
                let (_, out) = self.exec(&self.node, &list);
                out.lines()
                    .find(|l| l.contains("DROP") && l.contains(vips))
                    .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .ok_or_else(|| Error::Unexpected(format!("no counting rule in\n{out}")))
            })
            .sum()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
        // Deleting a namespace removes its links (the veth peers go too) and rules.
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// A tiny HTTP app (system Python, readable by any user) answering
/// `NAME\n` on `port` and appending one line per request to `log`.
pub const APP: &str = r#"
import http.server, sys
import socket
name, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bind = sys.argv[4] if len(sys.argv) > 4 else "0.0.0.0"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(log, "a") as f:
            f.write(self.path + " " + repr(sorted(self.headers.items())) + "\n")
        body = (name + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
s = S((bind, port), H)
print("ready", flush=True)
s.serve_forever()
"#;
