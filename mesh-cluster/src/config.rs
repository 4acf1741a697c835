//! The configuration files of a run's components, written into its run
//! folder: containerd's, the CNI network's, the kubelet's and kube-proxy's.

use std::path::Path;

use crate::{CLUSTER_CIDR, NODE_NAME, POD_CIDR, SANDBOX_IMAGE, pki};

/// containerd: its own root, state and socket in the run folder (pods'
/// network namespaces too: by default they are named in the host's
/// /run/netns, where they would outlive the cluster); the locally built
/// sandbox image; cgroupfs (no systemd here). Root in this VM
/// lacks CAP_SYS_RESOURCE: without `restrict_oom_score_adj` every sandbox
/// fails with "can't get final child's PID from pipe: EOF".
pub fn containerd(run: &Path) -> String {
    let r = run.display();
    format!(
        r#"version = 2
root = "{r}/containerd/root"
state = "{r}/containerd/state"
[grpc]
  address = "{r}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{r}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
"#
    )
}

/// The pod network: a bridge on the node, host-local addresses from the
/// node's pod CIDR, no masquerade (nothing leaves the namespace anyway).
pub fn cni(run: &Path) -> String {
    let r = run.display();
    format!(
        r#"{{"cniVersion": "0.4.0", "name": "mesh", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_CIDR}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{r}/cni/ipam"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}
"#
    )
}

/// The kubelet on this VM's cgroup v1: cgroupfs under the run's own cgroup
/// root, swap and cgroup v1 allowed, volume plugins in the run folder.
pub fn kubelet(run: &Path, cgroup_root: &str) -> String {
    let (r, p) = (run.display(), pki::dir(run));
    let p = p.display();
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  x509: {{clientCAFile: {p}/ca.crt}}
  webhook: {{enabled: true}}
  anonymous: {{enabled: false}}
authorization: {{mode: Webhook}}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://{r}/containerd.sock
clusterDNS: [{dns}]
clusterDomain: cluster.local
tlsCertFile: {p}/kubelet.crt
tlsPrivateKeyFile: {p}/kubelet.key
volumePluginDir: {r}/volume-plugins
staticPodPath: {r}/pods
protectKernelDefaults: false
serializeImagePulls: false
localStorageCapacityIsolation: false
evictionHard: {{memory.available: \"1%\", nodefs.available: \"1%\", imagefs.available: \"1%\"}}
",
        dns = crate::DNS_SERVICE_IP
    )
}

/// kube-proxy in iptables mode, with its conntrack settings at 0 (it may
/// not change the host's conntrack table).
pub fn kube_proxy(run: &Path) -> String {
    let r = run.display();
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {r}/kube-proxy.kubeconfig}}
mode: iptables
clusterCIDR: {CLUSTER_CIDR}
hostnameOverride: {NODE_NAME}
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"
    )
}

/// The API server's audit policy: every call of a service account of
/// `mesh-system` (the mesh's own parts) at the Metadata level — who, verb,
/// object, answer — so tests compare the bundle's RBAC with what the
/// parts really call; nothing else.
pub fn audit_policy() -> String {
    "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: [\"system:serviceaccounts:mesh-system\"]
- level: None
"
    .to_owned()
}
