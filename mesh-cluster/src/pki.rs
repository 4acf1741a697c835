//! The cluster's certificates, made per run: a CA, the API server's serving
//! certificate, a client certificate per component (its user and groups
//! are what RBAC and the Node authorizer see), the service-account signing
//! key, and a kubeconfig per client.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, NODE_IP, NODE_NAME, Result, write_private};

/// A client of the API server: its file stem, user and groups.
pub struct Client {
    /// File stem of its certificate, key and kubeconfig.
    pub name: &'static str,
    /// The user (certificate CN).
    pub user: &'static str,
    /// Its groups (certificate O).
    pub groups: &'static [&'static str],
}

/// Every client certificate a run makes.
pub const CLIENTS: &[Client] = &[
    Client {
        name: "admin",
        user: "kubernetes-admin",
        groups: &["system:masters"],
    },
    Client {
        name: "apiserver-kubelet-client",
        user: "kube-apiserver-kubelet-client",
        groups: &["system:masters"],
    },
    Client {
        name: "controller-manager",
        user: "system:kube-controller-manager",
        groups: &[],
    },
    Client {
        name: "scheduler",
        user: "system:kube-scheduler",
        groups: &[],
    },
    Client {
        name: "kube-proxy",
        user: "system:kube-proxy",
        groups: &[],
    },
    Client {
        name: "kubelet",
        user: "system:node:mesh-node",
        groups: &["system:nodes"],
    },
];

fn err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Setup(format!("cannot make {what}: {e}"))
}

fn leaf(cn: &str, groups: &[&str], sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    for g in groups {
        p.distinguished_name
            .push(DnType::OrganizationName, (*g).to_owned());
    }
    p.subject_alt_names = sans;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

/// Where the run's certificates are.
pub fn dir(run: &Path) -> PathBuf {
    run.join("pki")
}

/// Makes every certificate, key and kubeconfig of a run under `run`.
pub fn make(run: &Path) -> Result<()> {
    let pki = dir(run);
    std::fs::create_dir_all(&pki).map_err(|e| Error::io("create", &pki, e))?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mesh-cluster-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(err("the CA key"))?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err("the CA"))?;
    write_private(&pki.join("ca.crt"), ca.pem().as_bytes())?;
    write_private(&pki.join("ca.key"), ca_key_pem.as_bytes())?;

    let ip = |s: &str| SanType::IpAddress(s.parse().expect("an IP"));
    let dns = |s: &str| SanType::DnsName(s.try_into().expect("a DNS name"));
    let apiserver = leaf(
        "kube-apiserver",
        &[],
        vec![
            ip(NODE_IP),
            ip(crate::API_SERVICE_IP),
            ip("127.0.0.1"),
            dns("kubernetes"),
            dns("kubernetes.default"),
            dns("kubernetes.default.svc"),
            dns("kubernetes.default.svc.cluster.local"),
            dns("localhost"),
        ],
    );
    issue(&pki, "apiserver", apiserver, &ca)?;
    for c in CLIENTS {
        let sans = if c.name == "kubelet" {
            vec![ip(NODE_IP), dns(NODE_NAME)]
        } else {
            Vec::new()
        };
        issue(&pki, c.name, leaf(c.user, c.groups, sans), &ca)?;
        let kubeconfig = kubeconfig(&pki, c.name);
        write_private(
            &run.join(format!("{}.kubeconfig", c.name)),
            kubeconfig.as_bytes(),
        )?;
    }
    // Service-account tokens are signed with their own key.
    let sa = KeyPair::generate().map_err(err("the service-account key"))?;
    write_private(&pki.join("sa.key"), sa.serialize_pem().as_bytes())?;
    write_private(&pki.join("sa.pub"), sa.public_key_pem().as_bytes())?;
    Ok(())
}

fn issue(
    pki: &Path,
    name: &str,
    params: CertificateParams,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> Result<()> {
    let key = KeyPair::generate().map_err(err(name))?;
    let cert = params.signed_by(&key, ca).map_err(err(name))?;
    write_private(&pki.join(format!("{name}.crt")), cert.pem().as_bytes())?;
    write_private(
        &pki.join(format!("{name}.key")),
        key.serialize_pem().as_bytes(),
    )
}

/// A kubeconfig for client `name` (its certificate in `pki`).
fn kubeconfig(pki: &Path, name: &str) -> String {
    let p = pki.display();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: mesh
  cluster:
    certificate-authority: {p}/ca.crt
    server: https://{NODE_IP}:6443
users:
- name: {name}
  user:
    client-certificate: {p}/{name}.crt
    client-key: {p}/{name}.key
contexts:
- name: mesh
  context: {{cluster: mesh, user: {name}}}
current-context: mesh
"
    )
}
