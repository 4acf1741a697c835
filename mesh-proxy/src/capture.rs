//! `mesh-proxy init`: programs a pod's packet redirection in the nat table,
//! in chains of its own (as Istio's init does), so that every TCP
//! connection the app makes goes to the proxy's outbound port 15001 and
//! every one it receives goes through the inbound port 15006 — except the
//! proxy's own traffic (by uid/gid), loopback, and excluded ports/CIDRs.
//!
//! Rules are applied with one `iptables-restore --noflush`, so a pod never
//! sees half of them; applying twice gives the same rules; `--cleanup`
//! removes them.

use std::fmt::Write;
use std::process::Command;

/// Chains of ours in the nat table.
pub const CHAINS: [&str; 4] = [
    "MESH_INBOUND",
    "MESH_IN_REDIRECT",
    "MESH_OUTPUT",
    "MESH_REDIRECT",
];

/// What to capture.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The proxy's user id: its own connections are never captured.
    pub proxy_uid: u32,
    /// The proxy's group id.
    pub proxy_gid: u32,
    /// Where outbound connections go.
    pub outbound_port: u16,
    /// Where inbound connections go.
    pub inbound_port: u16,
    /// Inbound ports captured; empty means all.
    pub inbound_ports: Vec<u16>,
    /// Inbound ports never captured.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations captured; empty means all.
    pub outbound_cidrs: Vec<String>,
    /// Outbound destinations never captured.
    pub exclude_outbound_cidrs: Vec<String>,
    /// Outbound ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            inbound_ports: vec![],
            exclude_inbound_ports: vec![15090, 15021],
            outbound_cidrs: vec![],
            exclude_outbound_cidrs: vec![],
            exclude_outbound_ports: vec![],
        }
    }
}

/// An IP family: the same chains are programmed with `iptables` and
/// `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// Whether `cidr` (an address or CIDR) is of this family.
    fn holds(self, cidr: &str) -> bool {
        cidr.contains(':') == (self == Family::V6)
    }

    /// Families this pod has: IPv6 only when the kernel has it.
    fn present() -> Vec<Family> {
        let mut all = vec![Family::V4];
        if std::path::Path::new("/proc/net/if_inet6").exists() {
            all.push(Family::V6);
        }
        all
    }
}

/// The rules of `family` as `iptables-restore` input (CIDRs of the other
/// family left out). Declaring a chain flushes it, so this replaces any
/// earlier version of our chains; the jumps from PREROUTING and OUTPUT
/// are removed beforehand by [`apply`].
pub fn restore_input(c: &Capture, family: Family) -> String {
    let mut s = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        s,
        "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        c.inbound_port
    );
    let _ = writeln!(
        s,
        "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        c.outbound_port
    );
    // Inbound.
    let _ = writeln!(s, "-A PREROUTING -p tcp -j MESH_INBOUND");
    let _ = writeln!(
        s,
        "-A MESH_INBOUND -p tcp --dport {} -j RETURN",
        c.inbound_port
    );
    for p in &c.exclude_inbound_ports {
        let _ = writeln!(s, "-A MESH_INBOUND -p tcp --dport {p} -j RETURN");
    }
    if c.inbound_ports.is_empty() {
        let _ = writeln!(s, "-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT");
    } else {
        for p in &c.inbound_ports {
            let _ = writeln!(s, "-A MESH_INBOUND -p tcp --dport {p} -j MESH_IN_REDIRECT");
        }
    }
    // Outbound.
    let _ = writeln!(s, "-A OUTPUT -p tcp -j MESH_OUTPUT");
    let _ = writeln!(
        s,
        "-A MESH_OUTPUT -m owner --uid-owner {} -j RETURN",
        c.proxy_uid
    );
    let _ = writeln!(
        s,
        "-A MESH_OUTPUT -m owner --gid-owner {} -j RETURN",
        c.proxy_gid
    );
    let _ = writeln!(s, "-A MESH_OUTPUT -o lo -j RETURN");
    let _ = writeln!(s, "-A MESH_OUTPUT -d {} -j RETURN", family.loopback());
    for p in &c.exclude_outbound_ports {
        let _ = writeln!(s, "-A MESH_OUTPUT -p tcp --dport {p} -j RETURN");
    }
    for cidr in c.exclude_outbound_cidrs.iter().filter(|c| family.holds(c)) {
        let _ = writeln!(s, "-A MESH_OUTPUT -d {cidr} -j RETURN");
    }
    if c.outbound_cidrs.is_empty() {
        let _ = writeln!(s, "-A MESH_OUTPUT -j MESH_REDIRECT");
    } else {
        // Only the listed destinations: none of this family, none captured.
        for cidr in c.outbound_cidrs.iter().filter(|c| family.holds(c)) {
            let _ = writeln!(s, "-A MESH_OUTPUT -d {cidr} -j MESH_REDIRECT");
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// Runs `program` with `args` (and `input` on stdin); its stdout, or its
/// stderr as the error.
fn run(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot run {program}: {e} (is the iptables package installed?)")
        })?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes our jumps from the built-in chains.
fn remove_jumps(family: Family) -> anyhow::Result<()> {
    let iptables = |args: &[&str]| run(family.tool(), args, None);
    for builtin in ["PREROUTING", "OUTPUT"] {
        let rules = iptables(&["-t", "nat", "-S", builtin])?;
        for rule in rules
            .lines()
            .filter(|r| CHAINS.iter().any(|c| r.ends_with(&format!("-j {c}"))))
        {
            let spec: Vec<&str> = rule.split_whitespace().skip(1).collect(); // drop "-A"
            let mut args = vec!["-t", "nat", "-D"];
            args.extend(spec);
            iptables(&args)?;
        }
    }
    Ok(())
}

/// Programs the rules for IPv4 and, where the pod has it, IPv6
/// (idempotent).
pub fn apply(c: &Capture) -> anyhow::Result<()> {
    for family in Family::present() {
        remove_jumps(family)?;
        let restore = format!("{}-restore", family.tool());
        run(&restore, &["--noflush"], Some(&restore_input(c, family)))?;
    }
    Ok(())
}

/// Removes every rule and chain of ours (idempotent).
pub fn cleanup() -> anyhow::Result<()> {
    for family in Family::present() {
        remove_jumps(family)?;
        let iptables = |args: &[&str]| run(family.tool(), args, None);
        let existing = iptables(&["-t", "nat", "-S"])?;
        let ours: Vec<&str> = CHAINS
            .into_iter()
            .filter(|chain| existing.lines().any(|l| l == format!("-N {chain}")))
            .collect();
        for chain in &ours {
            iptables(&["-t", "nat", "-F", chain])?;
        }
        for chain in &ours {
            iptables(&["-t", "nat", "-X", chain])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules() {
        let r = restore_input(&Capture::default(), Family::V4);
        assert!(r.starts_with("*nat\n:MESH_INBOUND - [0:0]\n"));
        assert!(r.contains("-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(r.contains("-A MESH_INBOUND -p tcp --dport 15021 -j RETURN\n"));
        assert!(r.contains("-A MESH_OUTPUT -j MESH_REDIRECT\n"));
        assert!(r.ends_with("COMMIT\n"));
        // The proxy's own exclusion comes before the redirect.
        assert!(
            r.find("--uid-owner").unwrap() < r.find("-A MESH_OUTPUT -j MESH_REDIRECT").unwrap()
        );
    }

    #[test]
    fn lists_and_exclusions() {
        let c = Capture {
            inbound_ports: vec![8080],
            outbound_cidrs: vec!["10.96.0.0/12".into(), "fd00:96::/108".into()],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".into()],
            exclude_outbound_ports: vec![5432],
            ..Capture::default()
        };
        let r = restore_input(&c, Family::V4);
        let r6 = restore_input(&c, Family::V6);
        assert!(r6.contains("-A MESH_OUTPUT -d ::1/128 -j RETURN\n"));
        assert!(r6.contains("-A MESH_OUTPUT -d fd00:96::/108 -j MESH_REDIRECT\n"));
        assert!(
            !r6.contains("10.96.0.0/12") && !r.contains("fd00:96::"),
            "each family its own"
        );
        assert!(r.contains("-A MESH_INBOUND -p tcp --dport 8080 -j MESH_IN_REDIRECT\n"));
        assert!(!r.contains("-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT"));
        assert!(r.contains("-A MESH_OUTPUT -d 10.96.0.0/12 -j MESH_REDIRECT\n"));
        assert!(r.contains("-A MESH_OUTPUT -d 169.254.169.254/32 -j RETURN\n"));
        assert!(r.contains("-A MESH_OUTPUT -p tcp --dport 5432 -j RETURN\n"));
    }
}
