//! The mutating admission webhook: Kubernetes sends an `AdmissionReview`
//! (`admission.k8s.io/v1`) for each pod being created, and gets back a JSON
//! patch that adds the sidecar — the same injection `kube-inject` does.
//!
//! Which namespaces are injected is decided by the webhook configuration's
//! `namespaceSelector` (label `mesh-injection: enabled`), so the API server
//! only calls for pods in those namespaces; a pod still opts out with the
//! annotation `sidecar.mesh.dev/inject: "false"`.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use mesh_rules::{FieldError, FieldPath};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::config::MeshSettings;
use crate::inject::{Action, Options, inject_object};

/// The path the API server posts pods to (injection).
pub const INJECT_PATH: &str = "/inject";
/// The path the API server posts rules to (validation).
pub const VALIDATE_PATH: &str = "/validate";
/// Largest review body accepted (pods are far smaller; the API server's own limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;

/// A review's request, and the response that allows it (its uid).
fn request_of(body: &Value) -> Result<(&Value, Value), FieldError> {
    let missing = |path: FieldPath| FieldError::new(path, "missing: every AdmissionReview has one");
    let at = FieldPath::root().key("request");
    let request = body.get("request").ok_or_else(|| missing(at.clone()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or_else(|| missing(at.key("uid")))?;
    Ok((request, json!({ "uid": uid, "allowed": true })))
}

/// The AdmissionReview carrying `response`, in the review's apiVersion.
fn answer(body: &Value, response: Value) -> Value {
    let api_version = body
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// Answers one AdmissionReview. A pod is injected through a JSON patch;
/// other kinds and skipped pods are allowed unchanged; a pod that cannot be
/// injected is refused with the reason, so it never runs unmeshed by mistake.
pub fn review(body: &Value, cfg: &MeshSettings) -> Result<Value, FieldError> {
    let (request, mut response) = request_of(body)?;
    let is_pod = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request
            .pointer("/kind/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty();
    let creating = request.get("operation").and_then(Value::as_str) == Some("CREATE");
    if let (true, true, Some(object)) = (is_pod, creating, request.get("object")) {
        let mut pod = object.clone();
        match inject_object(&mut pod, cfg, &Options::default()) {
            Ok(reports) if reports.iter().any(|r| r.action == Action::Injected) => {
                let patch = json_patch::diff(object, &pod);
                let bytes = serde_json::to_vec(&patch).expect("patches serialize");
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            Ok(_) => {}
            Err(e) => {
                response["allowed"] = json!(false);
                response["status"] = json!({
                    "code": 400,
                    "message": format!("mesh sidecar injection failed: {e}"),
                });
            }
        }
    }
    Ok(answer(body, response))
}

/// Answers one AdmissionReview of a rule object (create or update): it
/// is allowed when the mesh would put it in force, else refused with every
/// problem, each as `meshctl validate` words it (field path, what is wrong,
/// what is allowed), one per line.
pub fn validate_review(body: &Value) -> Result<Value, FieldError> {
    let (request, mut response) = request_of(body)?;
    if let Some(object) = request.get("object").filter(|o| o.is_object()) {
        let namespace = request.get("namespace").and_then(Value::as_str);
        let document = mesh_rules::Rule::document_of_object(object, namespace);
        if let Err(problems) = mesh_rules::Rule::admit(document) {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            response["allowed"] = json!(false);
            response["status"] = json!({
                "code": 422,
                "reason": "Invalid",
                "message": format!("the mesh refuses this rule:\n{}", lines.join("\n")),
            });
        }
    }
    Ok(answer(body, response))
}

/// Why a certificate and key cannot serve TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is not PEM.
    #[error("the certificate is not valid PEM: {0}")]
    CertificatePem(rustls::pki_types::pem::Error),
    /// The certificate file is PEM without a certificate in it.
    #[error("the certificate file holds no certificate")]
    NoCertificate,
    /// The key file is not a PEM private key.
    #[error("the key is not a valid PEM private key: {0}")]
    KeyPem(rustls::pki_types::pem::Error),
    /// rustls refuses the pair.
    #[error("the certificate and key do not fit together: {0}")]
    Refused(#[from] rustls::Error),
}

/// TLS settings whose certificate is resolved per handshake (one that
/// rotates, as [`crate::certs::Manager`] keeps it).
pub fn tls_config_resolved(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// TLS settings from a PEM certificate chain and private key (from the
/// install bundle's Secret, or issued by mesh-ca).
pub fn tls_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(TlsError::CertificatePem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(TlsError::KeyPem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn reply(status: StatusCode, body: Vec<u8>, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn handle(
    req: Request<Incoming>,
    cfg: Arc<MeshSettings>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status, msg: String| reply(status, msg.into_bytes(), "text/plain; charset=utf-8");
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n".into()),
        (&Method::POST, path @ (INJECT_PATH | VALIDATE_PATH)) => {
            let inject = path == INJECT_PATH;
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("cannot read the request: {e}\n"),
                    ));
                }
            };
            match serde_json::from_slice::<Value>(&body)
                .map_err(|e| FieldError::message(format!("the body is not JSON: {e}")))
                .and_then(|v| {
                    if inject {
                        review(&v, &cfg)
                    } else {
                        validate_review(&v)
                    }
                }) {
                Ok(v) => reply(
                    StatusCode::OK,
                    serde_json::to_vec(&v).expect("JSON"),
                    "application/json",
                ),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("POST AdmissionReviews to {INJECT_PATH} (pods) or {VALIDATE_PATH} (rules)\n"),
        ),
    })
}

/// Serves the webhook over HTTPS on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    cfg: Arc<arc_swap::ArcSwap<MeshSettings>>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, _) = listener.accept().await?;
        let (acceptor, cfg) = (acceptor.clone(), cfg.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            // Each review with the configuration in force when it comes.
            let service = hyper::service::service_fn(move |req| handle(req, cfg.load_full()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
