//! Feeds arbitrary CSRs to mesh-ca's signer (PEM as given, or other bytes
//! wrapped as the DER of one): it must sign or refuse, never panic, and
//! whatever it signs carries exactly the caller's identity.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mesh_ca::Authority;
use mesh_rules::identity::Identity;

static CA: LazyLock<Authority> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("mesh-fuzz-ca-{}", std::process::id()));
    Authority::load_or_create(&dir, "cluster.local").expect("a CA in a temporary folder")
});

fn pem(der: &[u8]) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
}

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(t) if t.contains("-----BEGIN") => t.to_owned(),
        _ => pem(data),
    };
    let who = Identity::new("cluster.local", "default", "svca");
    if let Ok(chain) = CA.sign(&text, &who, 0) {
        let leaf = &chain[0];
        let (_, block) = x509_parser::pem::parse_x509_pem(leaf.as_bytes()).expect("PEM out");
        let cert = block.parse_x509().expect("X.509 out");
        let sans = cert
            .subject_alternative_name()
            .expect("one SAN extension")
            .expect("a SAN extension")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>();
        assert_eq!(sans, [format!("URI({who})")]);
    }
});
