//! Mutual TLS between the two sidecars of a chain, as a mesh with STRICT
//! mTLS has it: mesh-ca (not measured) signs both sidecars' certificates;
//! mesh-proxy gets its own, Envoy gets its from a `mesh-proxy sds` agent
//! in its "pod" (Istio's agent role; not measured, as Istio's
//! pilot-agent is not in Envoy's figures either).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// The trust domain's identities of the chain's two sides.
pub const CLIENT_ACCOUNT: &str = "bench-client";
/// The server side's service account.
pub const SERVER_ACCOUNT: &str = "bench-server";

/// A running mesh-ca and what a sidecar needs to reach it; its processes
/// (the CA, the agents) are stopped when it is dropped, unless handed over
/// with [`Ca::into_processes`].
pub struct Ca {
    processes: Vec<Child>,
    address: String,
    dir: PathBuf,
}

impl Drop for Ca {
    fn drop(&mut self) {
        for c in &mut self.processes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Ca {
    /// Starts mesh-ca (on `cpu`) with a new root in `dir`.
    pub fn start(binary: &Path, dir: &Path, cpu: &str) -> anyhow::Result<Ca> {
        let port = super::targets::free_port();
        let address = format!("127.0.0.1:{port}");
        std::fs::write(dir.join("tokens"), "")?;
        let mut child = super::targets::pinned(cpu, binary)
            .args(["--dir"])
            .arg(dir.join("ca"))
            .args(["--address", &address, "--server-name", "127.0.0.1"])
            .arg("--bootstrap-tokens")
            .arg(dir.join("tokens"))
            .stdout(Stdio::null())
            .spawn()?;
        let ready = super::targets::wait_ready(address.parse()?, &mut child, "mesh-ca");
        let ca = Ca {
            processes: vec![child],
            address,
            dir: dir.to_owned(),
        };
        ready.map(|()| ca)
    }

    /// The CA's and agents' processes, now the caller's to stop.
    pub fn into_processes(mut self) -> Vec<Child> {
        std::mem::take(&mut self.processes)
    }

    /// The `--ca-*` flags of a proxy (or agent) of service account
    /// `account` in namespace `default`, with a new bootstrap token.
    pub fn flags(&self, account: &str) -> anyhow::Result<Vec<String>> {
        use std::io::Write;
        let token = format!("{account}-{}", std::process::id());
        let file = self.dir.join(format!("{account}.token"));
        std::fs::write(&file, &token)?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("tokens"))
            .and_then(|mut f| writeln!(f, "{token},default,{account}"))?;
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        Ok(vec![
            "--ca-address".into(),
            self.address.clone(),
            "--ca-server-name".into(),
            "127.0.0.1".into(),
            "--ca-roots".into(),
            path(self.dir.join("ca").join("root-cert.pem")),
            "--ca-token-file".into(),
            path(file),
            "--namespace".into(),
            "default".into(),
            "--service-account".into(),
            account.into(),
        ])
    }

    /// Starts `mesh-proxy sds` for an Envoy of `account` (on `cpu`);
    /// returns its socket once it listens.
    pub fn agent(
        &mut self,
        mesh_proxy: &Path,
        account: &str,
        cpu: &str,
    ) -> anyhow::Result<PathBuf> {
        let socket = self.dir.join(format!("{account}-sds.sock"));
        let child = super::targets::pinned(cpu, mesh_proxy)
            .arg("sds")
            .arg("--socket")
            .arg(&socket)
            .args(self.flags(account)?)
            .stdout(Stdio::null())
            .spawn()?;
        self.processes.push(child);
        let child = self.processes.last_mut().expect("just pushed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !socket.exists() {
            anyhow::ensure!(
                child.try_wait()?.is_none(),
                "the SDS agent exited during start-up"
            );
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the SDS agent did not listen on {}",
                socket.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(socket)
    }
}

/// Which side of the chain a bootstrap is for.
#[derive(Debug, Clone)]
pub enum Side {
    /// TLS on every cluster: the workload's certificate presented, the
    /// server side's identity required (secure naming).
    Client {
        /// The SPIFFE ID the server side must present.
        peer: String,
    },
    /// TLS on every listener: clients must present a mesh certificate.
    Server,
}

/// A sidecar's mutual TLS in a chain.
#[derive(Debug, Clone)]
pub struct ChainTls {
    /// Which side.
    pub side: Side,
    /// Envoy: its SDS agent's socket (the `sds-grpc` cluster); mesh-proxy
    /// serves `default` and `ROOTCA` itself (ADS).
    pub agent: Option<PathBuf>,
    /// mesh-proxy: its `--ca-*` flags (it asks mesh-ca itself).
    pub flags: Vec<String>,
}

impl ChainTls {
    /// Where the secrets come from, as an SDS `ConfigSource` (flow YAML).
    fn source(&self) -> &'static str {
        match self.agent {
            Some(_) => {
                "{api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}, resource_api_version: V3}"
            }
            None => "{ads: {}, resource_api_version: V3}",
        }
    }

    /// The `transport_socket` of a listener's filter chain (server side,
    /// `alpn` accepted), as one YAML line indented by `indent`; empty on
    /// the client side.
    pub fn listener_socket(&self, indent: &str, alpn: &str) -> String {
        let Side::Server = self.side else {
            return String::new();
        };
        let src = self.source();
        format!(
            "{indent}transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {{alpn_protocols: [{alpn}], tls_certificate_sds_secret_configs: [{{name: default, sds_config: {src}}}], validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {src}}}}}}}}}\n"
        )
    }

    /// The `transport_socket` of a cluster (client side, `alpn` offered),
    /// as one YAML line indented by `indent`; empty on the server side.
    pub fn cluster_socket(&self, indent: &str, alpn: &str) -> String {
        let Side::Client { peer } = &self.side else {
            return String::new();
        };
        let src = self.source();
        format!(
            "{indent}transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: {{alpn_protocols: [{alpn}], tls_certificate_sds_secret_configs: [{{name: default, sds_config: {src}}}], combined_validation_context: {{default_validation_context: {{match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{peer}\"}}}}]}}, validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {src}}}}}}}}}}}\n"
        )
    }

    /// The `sds-grpc` cluster reaching the agent (Envoy only).
    pub fn agent_cluster(&self) -> String {
        match &self.agent {
            Some(socket) => format!(
                "  - name: sds-grpc\n    type: STATIC\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http2_protocol_options: {{}}}}\n    load_assignment:\n      cluster_name: sds-grpc\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address: {{pipe: {{path: \"{}\"}}}}\n",
                socket.display()
            ),
            None => String::new(),
        }
    }
}
