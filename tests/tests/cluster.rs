//! The Kubernetes substrate end to end: `mesh_cluster` brings up a real
//! single-node cluster (control plane, containerd, kubelet, kube-proxy,
//! CoreDNS) in its own namespaces; pods run as real containers from images
//! built here from local binaries. Needs the binaries tests/k8s/build.sh
//! makes (`MESH_K8S_BIN`; scripts/test.sh sets it) and root.

use std::time::Duration;

use mesh_testbed::kube::{Namespace, TestCluster};

fn images() -> Vec<mesh_cluster::images::Image> {
    // The mesh's own images, as the install bundle names them (msgd runs
    // as the server here).
    let msgd = mesh_testbed::binary("msgd").unwrap();
    let mut images =
        mesh_cluster::images::mesh(msgd.parent().unwrap(), "mesh.local", "test").unwrap();
    images.push(TestCluster::client_image());
    images
}

const WORKLOADS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  initContainers:
  # The mesh-proxy image runs, and its iptables programs the pod's network
  # namespace (as its capture init container does).
  - name: version
    image: mesh.local/mesh-proxy:test
    imagePullPolicy: Never
    args: [--version]
  - name: capture
    image: mesh.local/mesh-proxy:test
    imagePullPolicy: Never
    command: [iptables]
    args: [-t, nat, -A, PREROUTING, -p, tcp, --dport, "9999", -j, REDIRECT, --to-ports, "9997"]
    securityContext: {capabilities: {add: [NET_ADMIN]}}
  containers:
  - name: msgd
    image: mesh.local/msgd:test
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
"#;

#[test]
fn pods_run_as_containers_and_reach_each_other_by_ip_service_and_name() {
    mesh_testbed::require_root();
    let netns_before = named_netns();
    let c = TestCluster::up(&images());
    let ns = Namespace::create(&c, "smoke");
    ns.apply(WORKLOADS);
    ns.client_pod("client", "mesh.local/client:1");
    ns.wait_ready("server");
    let ip = ns.field("pod/server", "{.status.podIP}");
    assert!(ip.starts_with("10.244.0."), "{ip}");
    // The Service's EndpointSlice lists the ready pod.
    let listed = ns.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=server",
        "-o",
        "jsonpath={.items[*].endpoints[*].addresses[*]}",
    ]);
    assert_eq!(listed.trim(), ip);
    let cluster_ip = ns.field("service/server", "{.spec.clusterIP}");
    // By pod IP, by ClusterIP (kube-proxy's rules), by DNS name (CoreDNS).
    for (url, what) in [
        (format!("http://{ip}:9997/send?msg=pod-ip"), "pod-ip"),
        (
            format!("http://{cluster_ip}/send?msg=cluster-ip"),
            "cluster-ip",
        ),
        (
            "http://server.smoke.svc.cluster.local/send?msg=dns".to_owned(),
            "dns",
        ),
        ("http://server/send?msg=search".to_owned(), "search"),
        // The init container's rule is in the pod's network namespace.
        (
            format!("http://{ip}:9999/send?msg=redirected"),
            "redirected",
        ),
    ] {
        // kube-proxy programs a new Service's rules, and CoreDNS learns its
        // name, a moment after the EndpointSlice lists the pod; neither
        // says when, so the call is retried until it answers.
        let expected = format!("Msgd recv msg ok, msg= {what}\n");
        let curl = ["/usr/bin/curl", "-s", "--max-time", "2", &url];
        let mut last = String::new();
        let answered = mesh_cluster::wait(&url, Duration::from_secs(30), || {
            let mut args = vec!["kubectl", "-n", "smoke", "exec", "client", "--"];
            args.extend(curl);
            last = ns.cluster.run(&args).unwrap_or_else(|e| e.to_string());
            (last == expected).then_some(())
        });
        assert!(answered.is_ok(), "{url}: the last answer was {last:?}");
    }
    mesh_ca_checks_service_account_tokens(&c, &ns);
    // The app's log, through the kubelet.
    let logs = ns.logs("server");
    for what in ["pod-ip", "cluster-ip", "dns", "search", "redirected"] {
        assert!(logs.contains(what), "{what} not in the log:\n{logs}");
    }
    drop(ns);
    // Down leaves nothing: no process, cgroup, mount or file of the run.
    let path = c.run.clone();
    drop(c);
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
    // Pods' network namespaces were never named in the host's /run/netns.
    assert_eq!(named_netns(), netns_before);
}

/// mesh-ca in a cluster: a service-account token proves its account only
/// when the API server (TokenReview) says it is valid for mesh-ca's
/// audience; a token for another audience, a tampered one and one whose
/// bound object is gone are refused.
fn mesh_ca_checks_service_account_tokens(c: &mesh_cluster::Cluster, ns: &Namespace<'_>) {
    use mesh_ca::credentials::{AUDIENCE, AuthError, Caller};
    ns.kubectl(&["create", "serviceaccount", "svca"]);
    ns.kubectl(&["create", "secret", "generic", "bound"]);
    let token = |extra: &[&str]| {
        let mut args = vec!["create", "token", "svca"];
        args.extend_from_slice(extra);
        ns.kubectl(&args).trim().to_owned()
    };
    let valid = token(&["--audience", AUDIENCE]);
    let other_audience = token(&["--audience", "other"]);
    let bound = token(&[
        "--audience",
        AUDIENCE,
        "--bound-object-kind",
        "Secret",
        "--bound-object-name",
        "bound",
    ]);
    ns.kubectl(&["delete", "secret", "bound"]);
    // One character of the signature changed (not its last: that one's
    // low bits are padding, and the bytes would not change).
    let mut tampered = valid.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let kubeconfig = c.kubeconfig();
    let answers = c
        .in_network(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .unwrap();
                let client = kube::Client::try_from(config).unwrap();
                let tokens = mesh_ca::KubernetesTokens::new(client, AUDIENCE);
                let mut out = Vec::new();
                for t in [&valid, &other_audience, &tampered, &bound] {
                    use mesh_ca::Authenticator;
                    out.push(tokens.authenticate(t).await);
                }
                out
            })
        })
        .unwrap();
    assert_eq!(
        answers[0],
        Ok(Caller {
            namespace: ns.name.clone(),
            service_account: "svca".into()
        })
    );
    for (what, answer) in ["another audience", "tampered", "bound to a deleted object"]
        .iter()
        .zip(&answers[1..])
    {
        assert!(
            matches!(answer, Err(AuthError::Refused(_))),
            "a token of {what}: {answer:?}"
        );
    }
}

/// The network namespaces named in the host's /run/netns.
fn named_netns() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
