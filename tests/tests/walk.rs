//! The seed's walk end to end, as root, in network-namespace pods with
//! real capture, pilot, mesh-proxy sidecars and the sample services.

use mesh_testbed::mesh::Mesh;
use mesh_testbed::walk;

#[test]
fn the_seed_walk() {
    let mut mesh = Mesh::new();
    let r = walk::run(&mut mesh, &mut |line| eprintln!("{line}"));

    // 1. msgd is outside the mesh: svcb's call is refused, svca reports it.
    assert_eq!(r.refused.0, 500, "{}", r.refused.1);
    assert!(
        r.refused.1.contains("service_b:v0.1 send msg error"),
        "{}",
        r.refused.1
    );
    assert_eq!(r.msgd_before, 0, "msgd was reached before the egress rule");

    // 2. The egress rule opens it, and msgd sees the mesh's trace headers.
    assert_eq!(r.allowed.0, 200, "{}", r.allowed.1);
    assert!(
        r.allowed.1.contains("service_b:v0.1 send msg ok"),
        "{}",
        r.allowed.1
    );
    for h in [
        "x-request-id",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
    ] {
        assert!(
            r.msgd_headers.contains_key(h),
            "msgd did not see {h}: {:?}",
            r.msgd_headers
        );
    }
    assert!(
        r.msgd_headers.contains_key("x-b3-parentspanid"),
        "each sidecar hop is a span: {:?}",
        r.msgd_headers
    );

    // 3. 50/50 per request, every replica used.
    let (v1, v2) = r.split;
    assert_eq!(v1 + v2, 1000);
    assert!((470..=530).contains(&v1), "split {v1}/{v2}");
    for (pod, n) in &r.replicas {
        assert!(*n > 0, "{pod} got no traffic: {:?}", r.replicas);
    }

    // 4. The replace drops nothing, and then everything goes to v0.2.
    assert_eq!(
        r.replace_load,
        (0, 300),
        "failed requests during the replace"
    );
    assert_eq!(r.after, (0, 200));

    // 5. svca's sidecar counts requests per destination version.
    let by: std::collections::BTreeMap<_, _> = r.by_version.iter().cloned().collect();
    let at = |v: &str| by[&format!("outbound|80|{v}|svcb.default.svc.cluster.local")];
    assert_eq!((at("v0.1"), at("v0.2")), (v1 as u64, v2 as u64), "{by:?}");

    assert_eq!(r.escaped, 0, "a packet to a service VIP escaped capture");
}
