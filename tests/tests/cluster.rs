//! The Kubernetes substrate end to end: `mesh_cluster` brings up a real
//! single-node cluster (control plane, containerd, kubelet, kube-proxy,
//! CoreDNS) in its own namespaces; pods run as real containers from images
//! built here from local binaries. Needs the binaries tests/k8s/build.sh
//! makes (`MESH_K8S_BIN`; scripts/test.sh sets it) and root.

use std::path::{Path, PathBuf};

use mesh_cluster::images::{File, Image};
use mesh_cluster::{Cluster, Up, down, up};

/// The cluster's run folder; removed (with everything the cluster made)
/// when dropped, also when the test fails.
struct Run(PathBuf);

impl Drop for Run {
    fn drop(&mut self) {
        if let Err(e) = down(&self.0) {
            eprintln!("cluster down: {e}");
        }
    }
}

fn bin_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("MESH_K8S_BIN").expect(
        "MESH_K8S_BIN names the Kubernetes binaries: build them with tests/k8s/build.sh (scripts/test.sh does)",
    ))
}

fn images() -> Vec<Image> {
    let msgd = mesh_testbed::binary("msgd").unwrap();
    let pause = bin_dir().join("pause");
    let mut iptables = File::binary(
        Path::new("/usr/sbin/xtables-nft-multi"),
        "/usr/sbin/iptables",
    );
    // Its match and target extensions are loaded by name at run time.
    let xtables = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for e in std::fs::read_dir(xtables).unwrap().flatten() {
        iptables.push(File {
            source: e.path(),
            path: e.path().display().to_string(),
        });
    }
    let mut client = File::binary(&pause, "/pause");
    client.extend(File::binary(Path::new("/usr/bin/curl"), "/usr/bin/curl"));
    vec![
        Image {
            name: "mesh.local/msgd:1".into(),
            files: File::binary(&msgd, "/msgd"),
            entrypoint: vec!["/msgd".into()],
        },
        Image {
            name: "mesh.local/iptables:1".into(),
            files: iptables,
            entrypoint: vec!["/usr/sbin/iptables".into()],
        },
        Image {
            name: "mesh.local/client:1".into(),
            files: client,
            entrypoint: vec!["/pause".into()],
        },
    ]
}

const WORKLOADS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  initContainers:
  - name: capture
    image: mesh.local/iptables:1
    imagePullPolicy: Never
    args: [-t, nat, -A, PREROUTING, -p, tcp, --dport, "9999", -j, REDIRECT, --to-ports, "9997"]
    securityContext: {capabilities: {add: [NET_ADMIN]}}
  containers:
  - name: msgd
    image: mesh.local/msgd:1
    imagePullPolicy: Never
    readinessProbe:
      httpGet: {path: "/send?msg=probe", port: 9997}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 9997}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: client
    image: mesh.local/client:1
    imagePullPolicy: Never
"#;

/// What `GET /send?msg=MSG` at `url` answers from inside the client pod.
fn call(c: &Cluster, url: &str) -> String {
    c.run(&[
        "kubectl",
        "exec",
        "client",
        "--",
        "/usr/bin/curl",
        "-s",
        "--max-time",
        "5",
        url,
    ])
    .unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[test]
fn pods_run_as_containers_and_reach_each_other_by_ip_service_and_name() {
    mesh_testbed::require_root();
    let dir = tempfile::Builder::new()
        .prefix("mesh-cluster-")
        .tempdir()
        .unwrap();
    let run = Run(dir.path().join("run"));
    let opts = Up {
        run: run.0.clone(),
        bin: bin_dir(),
        node_program: mesh_testbed::binary("meshctl").unwrap(),
    };
    let c = up(&opts, &mut |step| eprintln!("cluster: {step}")).unwrap();
    mesh_cluster::images::import(&c, &images()).unwrap();
    c.apply(WORKLOADS).unwrap();
    for pod in ["server", "client"] {
        c.run(&[
            "kubectl",
            "wait",
            &format!("pod/{pod}"),
            "--for=condition=Ready",
            "--timeout=60s",
        ])
        .unwrap_or_else(|e| {
            panic!(
                "{pod} is not Ready: {e}\n{}",
                c.run(&["kubectl", "describe", "pods"]).unwrap_or_default()
            )
        });
    }
    let ip = c
        .run(&[
            "kubectl",
            "get",
            "pod",
            "server",
            "-o",
            "jsonpath={.status.podIP}",
        ])
        .unwrap();
    assert!(ip.starts_with("10.244.0."), "{ip}");
    // The Service's EndpointSlice lists the ready pod.
    let listed = c
        .run(&[
            "kubectl",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=server",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ])
        .unwrap();
    assert_eq!(listed.trim(), ip);
    let cluster_ip = c
        .run(&[
            "kubectl",
            "get",
            "service",
            "server",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    // By pod IP, by ClusterIP (kube-proxy's rules), by DNS name (CoreDNS).
    for (url, what) in [
        (format!("http://{ip}:9997/send?msg=pod-ip"), "pod-ip"),
        (
            format!("http://{cluster_ip}/send?msg=cluster-ip"),
            "cluster-ip",
        ),
        (
            "http://server.default.svc.cluster.local/send?msg=dns".to_owned(),
            "dns",
        ),
        ("http://server/send?msg=search".to_owned(), "search"),
        // The init container's rule is in the pod's network namespace.
        (
            format!("http://{ip}:9999/send?msg=redirected"),
            "redirected",
        ),
    ] {
        assert_eq!(
            call(&c, &url),
            format!("Msgd recv msg ok, msg= {what}\n"),
            "{url}"
        );
    }
    // The app's log, through the kubelet.
    let logs = c.run(&["kubectl", "logs", "server"]).unwrap();
    for what in ["pod-ip", "cluster-ip", "dns", "search", "redirected"] {
        assert!(logs.contains(what), "{what} not in the log:\n{logs}");
    }
    // Down leaves nothing: no process, cgroup, mount or file of the run.
    drop(c);
    let path = run.0.clone();
    drop(run);
    assert!(!path.exists(), "{} remains", path.display());
    let id = path.file_name().unwrap().to_string_lossy().into_owned();
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(format!("mesh-{id}")))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "{cgroups:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&path.display().to_string()), "{mounts}");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&path.display().to_string()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
