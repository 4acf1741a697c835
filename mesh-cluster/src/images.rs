//! OCI images made from binaries on this machine, without docker or a
//! registry: one uncompressed layer (the binary, and the shared libraries
//! it loads, found with `ldd`), a config and a manifest, content-addressed
//! in an OCI image layout, imported with `ctr images import` into the
//! namespace the kubelet uses. Pods name them with `imagePullPolicy: Never`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Cluster, Error, Result, run_checked};

/// A file of an image's layer.
#[derive(Debug, Clone)]
pub struct File {
    /// Where it is on this machine.
    pub source: PathBuf,
    /// Where it is in the image.
    pub path: String,
}

impl File {
    /// A program and the shared libraries it loads (with the loader), each
    /// at the path it has on this machine, the program at `path`.
    pub fn binary(source: &Path, path: &str) -> Vec<File> {
        let mut files = vec![File {
            source: source.to_owned(),
            path: path.to_owned(),
        }];
        // A static binary has none ("not a dynamic executable").
        if let Ok(out) = std::process::Command::new("ldd").arg(source).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let lib = line
                    .split("=>")
                    .last()
                    .and_then(|r| r.split_whitespace().next())
                    .filter(|p| p.starts_with('/'));
                if let Some(lib) = lib {
                    files.push(File {
                        source: PathBuf::from(lib),
                        path: lib.to_owned(),
                    });
                }
            }
        }
        files
    }
}

/// An image to build.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its reference (`mesh.local/pause:1`).
    pub name: String,
    /// Its one layer.
    pub files: Vec<File>,
    /// What a container runs.
    pub entrypoint: Vec<String>,
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn layer(files: &[File]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(true);
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        let inside = f.path.trim_start_matches('/');
        if !seen.insert(inside.to_owned()) {
            continue;
        }
        let bytes = std::fs::read(&f.source).map_err(|e| Error::io("read", &f.source, e))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, inside, bytes.as_slice())
            .map_err(|e| Error::io("pack", &f.source, e))?;
    }
    tar.into_inner()
        .map_err(|e| Error::io("pack", Path::new("layer"), e))
}

/// The image as an OCI image layout in a tar (what `ctr images import`
/// reads), named by the `org.opencontainers.image.ref.name` annotation.
pub fn build(image: &Image) -> Result<Vec<u8>> {
    let layer = layer(&image.files)?;
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": image.entrypoint,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    }))
    .expect("JSON");
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    }))
    .expect("JSON");
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": image.name},
        }],
    }))
    .expect("JSON");
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    let pack = |e| Error::io("pack", Path::new(&image.name), e);
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(pack)?;
    add("index.json", &index).map_err(pack)?;
    for (digest, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        add(&format!("blobs/sha256/{digest}"), bytes).map_err(pack)?;
    }
    tar.into_inner().map_err(pack)
}

/// The programs the mesh ships as images, as the install bundle names
/// them: `{hub}/{program}:{tag}`.
pub const MESH_PROGRAMS: &[&str] = &[
    "mesh-proxy",
    "mesh-pilot",
    "mesh-inject",
    "meshctl",
    "svca",
    "svcb",
    "msgd",
];

/// iptables (nft backend) under the names `mesh-proxy init` runs, with the
/// extensions it loads by name at run time.
fn iptables() -> Vec<File> {
    let multi = Path::new("/usr/sbin/xtables-nft-multi");
    let mut files = File::binary(multi, "/usr/sbin/iptables");
    for name in [
        "iptables-restore",
        "iptables-save",
        "ip6tables",
        "ip6tables-restore",
        "ip6tables-save",
    ] {
        files.push(File {
            source: multi.to_owned(),
            path: format!("/usr/sbin/{name}"),
        });
    }
    let xtables = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for e in std::fs::read_dir(xtables).into_iter().flatten().flatten() {
        files.push(File {
            source: e.path(),
            path: e.path().display().to_string(),
        });
    }
    files
}

/// The mesh's images from the binaries in `bin` (a cargo target folder,
/// release for users): each program at `/usr/local/bin/NAME` as its
/// entrypoint; mesh-proxy's with iptables for its capture init container.
pub fn mesh(bin: &Path, hub: &str, tag: &str) -> Result<Vec<Image>> {
    MESH_PROGRAMS
        .iter()
        .map(|program| {
            let source = bin.join(program);
            if !source.exists() {
                return Err(Error::Setup(format!(
                    "{program} is missing in {}: cargo build --release --bins",
                    bin.display()
                )));
            }
            let path = format!("/usr/local/bin/{program}");
            let mut files = File::binary(&source, &path);
            if *program == "mesh-proxy" {
                files.extend(iptables());
            }
            Ok(Image {
                name: format!("{hub}/{program}:{tag}"),
                files,
                entrypoint: vec![path],
            })
        })
        .collect()
}

/// Builds each image and imports it into the cluster's containerd.
pub fn import(cluster: &Cluster, images: &[Image]) -> Result<()> {
    let socket = cluster.run.join("containerd.sock");
    crate::wait("containerd", std::time::Duration::from_secs(30), || {
        socket.exists().then_some(())
    })?;
    for image in images {
        let file = cluster
            .run
            .join(format!("image-{}.tar", sha256(image.name.as_bytes())));
        std::fs::write(&file, build(image)?).map_err(|e| Error::io("write", &file, e))?;
        let (sock, tar) = (socket.display().to_string(), file.display().to_string());
        run_checked(&mut cluster.command(&[
            "ctr",
            "--address",
            &sock,
            "--namespace",
            "k8s.io",
            "images",
            "import",
            &tar,
        ])?)?;
        let _ = std::fs::remove_file(&file);
    }
    Ok(())
}
