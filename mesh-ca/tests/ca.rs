//! mesh-ca as a process: what it issues, what it refuses, what it keeps.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use mesh_proto::ca::CertificateRequest;
use mesh_proto::ca::certificate_service_client::CertificateServiceClient;
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use x509_parser::prelude::*;

const SVCA: &str = "0123456789abcdef-svca";
const EXPIRED: &str = "0123456789abcdef-old";

/// A running mesh-ca on a free loopback port; killed when dropped.
struct Ca {
    child: Child,
    port: u16,
    root: String,
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Ca {
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("{SVCA},default,svca\n{EXPIRED},default,svca,2021-06-01T00:00:00Z\n"),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
        .arg("--dir")
        .arg(dir.join("ca"))
        .arg("--bootstrap-tokens")
        .arg(&tokens)
        .args(["--address", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("MESH_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.by_ref().any(|l| l.unwrap().contains("ready"));
    assert!(ready, "mesh-ca exited before it was ready");
    std::thread::spawn(move || lines.for_each(drop));
    let root = std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap();
    Ca { child, port, root }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn client(ca: &Ca) -> CertificateServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.root))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", ca.port))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    CertificateServiceClient::new(channel)
}

fn csr(sans: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("DNS:") {
            Some(dns) => SanType::DnsName(dns.try_into().unwrap()),
            None => SanType::URI((*s).try_into().unwrap()),
        })
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn ask(
    ca: &Ca,
    token: Option<&str>,
    csr: String,
    validity_seconds: i64,
) -> Result<Vec<String>, tonic::Status> {
    let mut request = tonic::Request::new(CertificateRequest {
        csr,
        validity_seconds,
    });
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client(ca)
        .await
        .create_certificate(request)
        .await
        .map(|r| r.into_inner().cert_chain)
}

fn der(pem_text: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .unwrap()
        .1
        .contents
}

const SVCA_ID: &str = "spiffe://cluster.local/ns/default/sa/svca";

#[tokio::test]
async fn issues_a_short_lived_certificate_for_the_callers_identity_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start(dir.path(), &[]);
    let mode = std::fs::metadata(dir.path().join("ca/ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the generated key is private");

    let chain = ask(&ca, Some(SVCA), csr(&[SVCA_ID]), 600).await.unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    assert_eq!(chain[1].trim(), ca.root.trim());
    let (leaf_der, root_der) = (der(&chain[0]), der(&chain[1]));
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key()))
        .expect("signed by the root");
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, [format!("URI({SVCA_ID})")]);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        600 + 60,
        "asked lifetime plus the clock-skew margin"
    );
    assert!(!leaf.is_ca());

    // The default lifetime is 24 h.
    let chain = ask(&ca, Some(SVCA), csr(&[SVCA_ID]), 0).await.unwrap();
    let leaf_der = der(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(lifetime, 24 * 3600 + 60);

    // A restart keeps the root.
    drop(ca);
    let again = start(dir.path(), &[]);
    let chain = ask(&again, Some(SVCA), csr(&[SVCA_ID]), 0).await.unwrap();
    assert_eq!(chain[1].trim(), again.root.trim());
}

#[tokio::test]
async fn refuses_every_request_for_anything_but_the_proven_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start(dir.path(), &["--max-validity", "2h"]);
    /// What is tried, the token, the CSR's SANs, the lifetime; the answer.
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Vec<&'a str>,
        i64,
        tonic::Code,
        &'a str,
    );
    let cases: [Case; 8] = [
        (
            "another service account",
            Some(SVCA),
            vec!["spiffe://cluster.local/ns/default/sa/svcb"],
            0,
            tonic::Code::PermissionDenied,
            "the CSR asks for URI:spiffe://cluster.local/ns/default/sa/svcb; a caller authenticated as spiffe://cluster.local/ns/default/sa/svca may only ask for exactly that URI SAN",
        ),
        (
            "extra SANs",
            Some(SVCA),
            vec![SVCA_ID, "DNS:svcb.default.svc.cluster.local"],
            0,
            tonic::Code::PermissionDenied,
            "asks for URI:spiffe://cluster.local/ns/default/sa/svca, DNS:svcb.default.svc.cluster.local",
        ),
        (
            "no SAN",
            Some(SVCA),
            vec![],
            0,
            tonic::Code::PermissionDenied,
            "asks for no SAN",
        ),
        (
            "another trust domain",
            Some(SVCA),
            vec!["spiffe://example.org/ns/default/sa/svca"],
            0,
            tonic::Code::PermissionDenied,
            "asks for URI:spiffe://example.org/ns/default/sa/svca",
        ),
        (
            "no token",
            None,
            vec![SVCA_ID],
            0,
            tonic::Code::Unauthenticated,
            "no credential",
        ),
        (
            "a tampered token",
            Some("0123456789abcdef-svcb"),
            vec![SVCA_ID],
            0,
            tonic::Code::Unauthenticated,
            "not a bootstrap token of this CA",
        ),
        (
            "an expired token",
            Some(EXPIRED),
            vec![SVCA_ID],
            0,
            tonic::Code::Unauthenticated,
            "it expired at 2021-06-01T00:00:00Z",
        ),
        (
            "a lifetime over the maximum",
            Some(SVCA),
            vec![SVCA_ID],
            3 * 3600,
            tonic::Code::InvalidArgument,
            "a lifetime of 10800s is out of bounds: ask for 60s to 7200s",
        ),
    ];
    for (case, token, sans, validity, code, message) in cases {
        let err = ask(&ca, token, csr(&sans), validity).await.unwrap_err();
        assert_eq!(err.code(), code, "{case}: {}", err.message());
        assert!(
            err.message().contains(message),
            "{case}: `{}` does not say `{message}`",
            err.message()
        );
    }
    let err = ask(&ca, Some(SVCA), "not a CSR".into(), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn signs_with_a_plugged_in_intermediate_and_sends_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("ca");
    std::fs::create_dir(&cacerts).unwrap();
    // A root the user keeps offline, and an intermediate for this cluster.
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root_cert = root.self_signed(&root_key).unwrap();
    let inter_key = KeyPair::generate().unwrap();
    let mut inter = CertificateParams::new(Vec::<String>::new()).unwrap();
    inter.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    inter
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cluster-1 intermediate");
    let issuer = rcgen::Issuer::new(root, &root_key);
    let inter_cert = inter.signed_by(&inter_key, &issuer).unwrap();
    for (name, text) in [
        ("ca-cert.pem", inter_cert.pem()),
        ("ca-key.pem", inter_key.serialize_pem()),
        ("cert-chain.pem", inter_cert.pem() + &root_cert.pem()),
        ("root-cert.pem", root_cert.pem()),
    ] {
        std::fs::write(cacerts.join(name), text).unwrap();
    }
    let ca = start(dir.path(), &[]);
    let chain = ask(&ca, Some(SVCA), csr(&[SVCA_ID]), 0).await.unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    let ders: Vec<Vec<u8>> = chain.iter().map(|c| der(c)).collect();
    let certs: Vec<X509Certificate> = ders
        .iter()
        .map(|d| X509Certificate::from_der(d).unwrap().1)
        .collect();
    certs[0]
        .verify_signature(Some(certs[1].public_key()))
        .expect("leaf signed by the intermediate");
    certs[1]
        .verify_signature(Some(certs[2].public_key()))
        .expect("intermediate signed by the root");
    assert_eq!(ders[2], der(&root_cert.pem()), "the user's root last");

    // Three of the four files: refused at start with the missing one named.
    std::fs::remove_file(cacerts.join("cert-chain.pem")).unwrap();
    drop(ca);
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
        .arg("--dir")
        .arg(&cacerts)
        .args(["--bootstrap-tokens", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("but not cert-chain.pem"),
        "stderr: {stderr}"
    );
}
