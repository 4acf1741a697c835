//! `meshctl cluster up|down|status|exec`: a single-node Kubernetes cluster
//! on this machine (mesh_cluster), for trying the mesh on Kubernetes
//! without kind, k3d or docker.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

/// Where a cluster lives unless told otherwise.
const DEFAULT_RUN_DIR: &str = "/var/run/mesh-cluster";

/// A cluster command.
#[derive(Subcommand)]
pub enum Cluster {
    /// Start a cluster; prints progress and, last, the admin kubeconfig's path.
    Up {
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Where the Kubernetes binaries are (tests/k8s/build.sh prints it).
        #[arg(long, env = "MESH_K8S_BIN")]
        bin_dir: PathBuf,
    },
    /// Stop the cluster and remove every process, namespace, mount, cgroup
    /// and file of it.
    Down {
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Whether a cluster runs, and its nodes.
    Status {
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Run a command inside the cluster's namespaces (kubectl, curl, …).
    Exec {
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Build the mesh's images from its binaries and import them into the
    /// cluster, named as the install bundle names them.
    Images {
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Where the binaries are (a cargo target folder: target/release).
        #[arg(long)]
        bin_dir: PathBuf,
        /// Image registry part of the names.
        #[arg(long, default_value = "mesh.local")]
        hub: String,
        /// Image tag.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
    },
    /// The node process itself (started by `up` in new namespaces).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        run_dir: PathBuf,
        #[arg(long)]
        bin_dir: PathBuf,
    },
}

/// Runs a cluster command.
pub fn run(cmd: Cluster) -> anyhow::Result<ExitCode> {
    match cmd {
        Cluster::Up { run_dir, bin_dir } => {
            let opts = mesh_cluster::Up {
                run: run_dir,
                bin: bin_dir,
                node_program: std::env::current_exe().context("cannot find meshctl")?,
            };
            let c = mesh_cluster::up(&opts, &mut |step| println!("{step}"))
                .context("the cluster did not come up")?;
            println!("{}", c.kubeconfig().display());
            Ok(ExitCode::SUCCESS)
        }
        Cluster::Down { run_dir } => {
            mesh_cluster::down(&run_dir)?;
            println!("cluster in {} removed", run_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cluster::Status { run_dir } => {
            let c = mesh_cluster::Cluster::at(&run_dir);
            match c.node_pid() {
                None => {
                    println!("no cluster runs in {}", run_dir.display());
                    Ok(ExitCode::FAILURE)
                }
                Some(pid) => {
                    println!("cluster in {} (node process {pid})", run_dir.display());
                    print!("{}", c.run(&["kubectl", "get", "nodes", "-o", "wide"])?);
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Cluster::Exec { run_dir, command } => {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let status = mesh_cluster::Cluster::at(&run_dir)
                .command(&args)?
                .status()
                .context("cannot run nsenter")?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        Cluster::Images {
            run_dir,
            bin_dir,
            hub,
            tag,
        } => {
            let images = mesh_cluster::images::mesh(&bin_dir, &hub, &tag)?;
            mesh_cluster::images::import(&mesh_cluster::Cluster::at(&run_dir), &images)?;
            for i in &images {
                println!("imported {}", i.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cluster::Node { run_dir, bin_dir } => {
            // A long-running process: its log goes through tracing (to the
            // node.log `up` gives it).
            let _logging = mesh_runtime::log::init()?;
            mesh_cluster::node::run(&run_dir, &bin_dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
