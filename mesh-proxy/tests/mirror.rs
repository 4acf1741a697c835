//! Request mirroring (Envoy's `request_mirror_policies`), run against
//! mesh-proxy and against Envoy with the same bootstrap: copies counted at
//! the mirror backend with their host and body, a share of requests
//! mirrored, and a mirror that never answers costs the original nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `/all` is mirrored to `shadow` always, `/half` half of the time, and
/// `/stuck` to a backend that accepts and never answers.
fn mirror_routes() -> String {
    let route = |prefix: &str, mirror: &str| {
        format!(
            "              - match: {{prefix: \"{prefix}\"}}\n                route:\n                  cluster: v1\n                  request_mirror_policies:\n{mirror}"
        )
    };
    [
        route(
            "/all",
            "                  - cluster: shadow\n",
        ),
        route(
            "/half",
            "                  - cluster: shadow\n                    runtime_fraction: {default_value: {numerator: 50, denominator: HUNDRED}}\n",
        ),
        route("/stuck", "                  - cluster: stuck\n"),
    ]
    .concat()
}

/// A loopback listener that accepts connections and never answers.
fn silent_listener() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = l.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in held.incoming().flatten() {
            open.push(s);
        }
    });
    l
}

/// Waits until `backend` has counted `n` requests (copies arrive on their
/// own time), failing after 5 s.
fn wait_count(backend: &Backend, n: usize) {
    mesh_testbed::eventually("the mirrored copies", Duration::from_secs(5), || {
        (backend.count() >= n).then_some(())
    });
}

#[test]
fn mirrors_copy_requests_like_envoy() {
    let stuck = silent_listener();
    let stuck_port = stuck.local_addr().unwrap().port();
    for name in ["mesh-proxy", "envoy"] {
        let (v1, shadow) = (Backend::start("v1"), Backend::start("shadow"));
        let config = bootstrap(&mirror_routes(), &[("v1", &v1), ("shadow", &shadow)]).replace(
            "  clusters:\n",
            &format!(
                "  clusters:\n{}",
                cluster("stuck", &[(stuck_port, "HEALTHY")], "")
            ),
        );
        let proxy = if name == "envoy" {
            envoy(&config)
        } else {
            mesh_proxy(&config)
        };

        // Every request copied, the host marked as a shadow's.
        for host in ["svcb", "svcb:80"] {
            for _ in 0..10 {
                assert_eq!(timed_get(&proxy, "/all", host).0, 200, "{name}");
            }
        }
        wait_count(&shadow, 20);
        let hosts: Vec<String> = shadow
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.0.clone())
            .collect();
        assert_eq!(
            hosts.iter().filter(|h| *h == "svcb-shadow").count(),
            10,
            "{name}: {hosts:?}"
        );
        assert_eq!(
            hosts.iter().filter(|h| *h == "svcb-shadow:80").count(),
            10,
            "{name}: {hosts:?}"
        );
        assert_eq!(v1.count(), 20, "{name}: the originals");

        // A body is copied whole.
        let url = format!("http://{}/all", proxy.listener("http"));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "x".repeat(200_000)).unwrap();
        let body = format!("@{}", file.path().display());
        let (_, code) = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "host: svcb",
            "--data-binary",
            &body,
            &url,
        ]);
        assert_eq!(code, "200", "{name}");
        wait_count(&shadow, 21);
        assert_eq!(
            shadow.seen.lock().unwrap()[20].1,
            200_000,
            "{name}: the copy's body"
        );

        // A share: mesh-proxy's is exact, Envoy draws at random.
        let before = shadow.count();
        for _ in 0..200 {
            assert_eq!(timed_get(&proxy, "/half", "svcb").0, 200, "{name}");
        }
        let expected = if name == "mesh-proxy" {
            100..=100
        } else {
            70..=130
        };
        let settle = Instant::now() + Duration::from_secs(1);
        while shadow.count() - before < *expected.start() && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(20));
        }
        let copied = shadow.count() - before;
        assert!(
            expected.contains(&copied),
            "{name}: {copied} of 200 mirrored"
        );

        // A mirror that never answers: the original is answered at once.
        for _ in 0..5 {
            let (code, took) = timed_get(&proxy, "/stuck", "svcb");
            assert_eq!(code, 200, "{name}");
            assert!(took < 0.5, "{name}: the original took {took} s");
        }
    }
}
