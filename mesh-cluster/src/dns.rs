//! Cluster DNS: CoreDNS (built from its module) as the `kube-dns` Service
//! at the address the kubelet gives pods. It answers for the cluster's
//! names only; there is no upstream to forward to.

use std::path::Path;
use std::time::Duration;

use crate::{Cluster, DNS_SERVICE_IP, Result, images};

/// The image name of CoreDNS.
pub const IMAGE: &str = "mesh.local/coredns:1";

fn manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
        }}
        cache 30
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: {IMAGE}
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {{name: dns, containerPort: 53, protocol: UDP}}
        - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 1
        volumeMounts: [{{name: config, mountPath: /etc/coredns}}]
      volumes:
      - name: config
        configMap: {{name: coredns}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {DNS_SERVICE_IP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
"#
    )
}

/// Imports CoreDNS's image, deploys it as `kube-dns`, and waits until it
/// is ready.
pub fn deploy(cluster: &Cluster, bin: &Path) -> Result<()> {
    images::import(
        cluster,
        &[images::Image {
            name: IMAGE.into(),
            files: images::File::binary(&bin.join("coredns"), "/coredns"),
            entrypoint: vec!["/coredns".into()],
        }],
    )?;
    cluster.apply(&manifest())?;
    cluster.run(&[
        "kubectl",
        "-n",
        "kube-system",
        "rollout",
        "status",
        "deployment/coredns",
        &format!("--timeout={}s", Duration::from_secs(60).as_secs()),
    ])?;
    Ok(())
}
