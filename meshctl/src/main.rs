//! `meshctl`: the mesh's command-line tool.

mod cluster;
mod demo;
mod files;
mod forward;
mod graph;
mod inspect;
mod install;
mod kube_inject;
mod output;
mod rules;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mesh_pilot::store::kubernetes::KubernetesStore;
use mesh_pilot::store::{Change, RuleStore};

/// Control the mesh: validate and manage rules, run the demo.
#[derive(Parser)]
#[command(name = "meshctl", version, about, propagate_version = true)]
struct Cli {
    /// The local rule store's folder. Default: $XDG_STATE_HOME/mesh/store,
    /// else ~/.local/state/mesh/store. Where rules go: a cluster when
    /// --kubeconfig or --context is given; else this folder when given;
    /// else a cluster when KUBECONFIG is set or meshctl runs in a pod; else
    /// the default folder.
    #[arg(long, global = true, env = "MESH_STORE", value_name = "DIR")]
    store: Option<PathBuf>,

    /// Rules go to the cluster of this kubeconfig (as custom resources).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (its current one when absent).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,

    #[command(subcommand)]
    command: Command,
}

/// Output formats of `get`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Output {
    /// A table for people.
    Table,
    /// YAML documents, ready for `replace -f`.
    Yaml,
    /// JSON (one object, or a List).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check rule files without changing anything; exit 1 listing every problem.
    Validate {
        /// Files, folders (their *.yaml, *.yml, *.json, recursively) or `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<String>,
    },
    /// Write rules in another API: Istio 0.4's kinds as today's
    /// (VirtualService, DestinationRule, ServiceEntry), or today's and
    /// Gateway API's as 0.4's. Prints YAML; what the target cannot say is
    /// listed on stderr and the exit code is 2.
    Convert {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<String>,
        /// The API to write.
        #[arg(long, value_enum, default_value_t = rules::Api::Today)]
        to: rules::Api,
    },
    /// Add rules; fails, changing nothing, if any of them exists or is invalid.
    Create {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<String>,
    },
    /// Replace existing rules; fails, changing nothing, if any is missing or invalid.
    Replace {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<String>,
    },
    /// Remove rules named in files, or by kind and name.
    Delete {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename", num_args = 1.., conflicts_with_all = ["kind", "names"])]
        files: Vec<String>,
        /// Rule kind (route-rule, destination-policy, egress-rule).
        #[arg(required_unless_present = "files")]
        kind: Option<String>,
        /// Rule names.
        #[arg(requires = "kind")]
        names: Vec<String>,
        /// Namespace of the named rules.
        #[arg(short = 'n', long, default_value = mesh_rules::rules::DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Show rules.
    Get {
        /// Rule kind (route-rule, destination-policy, egress-rule, or `all`).
        kind: String,
        /// A rule name; all rules of the kind when absent.
        name: Option<String>,
        /// Namespace.
        #[arg(short = 'n', long, default_value = mesh_rules::rules::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Add the mesh sidecar to Kubernetes workloads: `meshctl kube-inject -f app.yaml | kubectl apply -f -`.
    KubeInject(kube_inject::Args),
    /// A single-node Kubernetes cluster on this machine (no docker needed).
    #[command(subcommand)]
    Cluster(cluster::Cluster),
    /// Every proxy connected to pilot: per xDS type SYNCED, STALE or NACKED.
    ProxyStatus {
        #[command(flatten)]
        pilot: PilotArgs,
    },
    /// Rules that select no known service or version, and stored fields
    /// the mesh does not act on (from pilot); exits 1 when any is found.
    Analyze {
        #[command(flatten)]
        pilot: PilotArgs,
    },
    /// What a proxy runs, from its admin endpoint (mesh-proxy or Envoy).
    ProxyConfig {
        /// listeners, routes, clusters or endpoints.
        #[arg(value_enum)]
        section: inspect::Section,
        /// The proxy: its admin address (`host:port`), or in a cluster its
        /// pod (`name` or `name.namespace`), reached through the API
        /// server's port-forward.
        #[arg(default_value = "127.0.0.1:15000")]
        admin: String,
        /// Output format (table or json).
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Who calls whom, with request rates and error ratios, from
    /// Prometheus or straight from the sidecars' metrics (DOT, SVG, JSON).
    Graph(graph::Args),
    /// Render the mesh's Kubernetes bundles (today: the observability
    /// addons) from the templates, with `--set key=value` changes.
    Install(install::Args),
    /// Remove from the cluster every object the bundles made (as `kubectl
    /// delete -f` of each), waiting until the mesh's namespace is gone.
    Uninstall(install::uninstall::Args),
    /// Print the URLs of the mesh's dashboards and debug pages (opens nothing).
    Dashboard(graph::DashboardArgs),
    /// Walk the seed's steps on this machine.
    Demo {
        /// Leave the mesh running (until Ctrl-C) and print how to reach it.
        #[arg(long)]
        keep: bool,
        /// Only the rule steps (validate, create, replace) in a temporary store.
        #[arg(long)]
        rules_only: bool,
        /// Run on loopback addresses even as root (no namespaces, no
        /// capture): what a user without root gets.
        #[arg(long)]
        loopback: bool,
        /// The sidecar in every pod: mesh-proxy, or an unmodified Envoy
        /// configured only by pilot (network namespaces, as root).
        #[arg(long, value_enum, default_value_t = demo::Proxy::MeshProxy)]
        proxy: demo::Proxy,
        /// Only remove what killed runs left behind (network namespaces and
        /// their processes), then exit.
        #[arg(long, conflicts_with_all = ["keep", "rules_only", "loopback", "proxy"])]
        cleanup: bool,
    },
}

/// Where pilot's debug endpoint is.
#[derive(clap::Args)]
struct PilotArgs {
    /// pilot's debug address. Default: in a cluster (chosen as rule
    /// commands choose one), a ready pilot pod through the API server's
    /// port-forward; else 127.0.0.1:15014.
    #[arg(long, env = "MESH_PILOT_DEBUG", value_name = "HOST:PORT")]
    pilot: Option<String>,
    /// The mesh's namespace in the cluster.
    #[arg(long, default_value = "mesh-system", value_name = "NAMESPACE")]
    mesh_namespace: String,
}

/// pilot's debug address: given, or a port-forward to a pilot pod of the
/// cluster rule commands would use, or the local default.
async fn pilot_address(
    a: PilotArgs,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> anyhow::Result<String> {
    if let Some(address) = a.pilot {
        return Ok(address);
    }
    match backend(None, kubeconfig, context) {
        Ok(Backend::Cluster(file, context)) => {
            let client = cluster_client(file, context).await?;
            let pod = forward::pilot_pod(client.clone(), &a.mesh_namespace).await?;
            let local =
                forward::forward(client, &a.mesh_namespace, &pod, forward::PILOT_DEBUG_PORT)
                    .await?;
            Ok(local.to_string())
        }
        _ => Ok(format!("127.0.0.1:{}", forward::PILOT_DEBUG_PORT)),
    }
}

/// A proxy's admin address: `host:port` as given, else a pod's admin
/// port through a port-forward.
async fn admin_address(
    target: &str,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> anyhow::Result<String> {
    if target.contains(':') {
        return Ok(target.to_owned());
    }
    let (pod, namespace) = forward::pod_and_namespace(target);
    let client = cluster_client(kubeconfig, context).await?;
    let local = forward::forward(client, namespace, pod, forward::ADMIN_PORT).await?;
    Ok(local.to_string())
}

/// Where rule commands read and write.
enum Backend {
    /// A folder on this machine.
    Local(PathBuf),
    /// A cluster's custom resources (kubeconfig file, context).
    Cluster(Option<PathBuf>, Option<String>),
}

/// The choice `--store`'s help documents.
fn backend(
    store: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> anyhow::Result<Backend> {
    if kubeconfig.is_some() || context.is_some() {
        return Ok(Backend::Cluster(kubeconfig, context));
    }
    if let Some(d) = store {
        return Ok(Backend::Local(d));
    }
    if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    {
        return Ok(Backend::Cluster(None, None));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| anyhow::anyhow!("no rule store: pass --store DIR or set MESH_STORE"))?;
    Ok(Backend::Local(state.join("mesh/store")))
}

/// A client of the cluster a kubeconfig (else KUBECONFIG, ~/.kube/config
/// or the pod's own account) and a context name.
async fn cluster_client(
    file: Option<PathBuf>,
    context: Option<String>,
) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match file {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if options.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// The rule store a backend names.
async fn open(backend: Backend) -> anyhow::Result<Box<dyn RuleStore>> {
    match backend {
        Backend::Local(dir) => Ok(Box::new(mesh_pilot::store::LocalStore::new(dir))),
        Backend::Cluster(file, context) => {
            let client = cluster_client(file, context).await?;
            let store = KubernetesStore::connect(client)
                .await
                .context("cannot reach the cluster")?;
            Ok(Box::new(store))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { files } => rules::validate(&files),
        Command::Convert { files, to } => rules::convert(&files, to),
        Command::Demo {
            keep,
            rules_only,
            loopback,
            proxy,
            cleanup,
        } => {
            if cleanup {
                demo::cleanup()
            } else if rules_only {
                demo::rule_steps(keep).await
            } else {
                demo::run(keep, loopback || !mesh_local::netns::is_root(), proxy).await
            }
        }
        Command::KubeInject(args) => kube_inject::run(args),
        Command::Cluster(c) => cluster::run(c),
        Command::ProxyStatus { pilot } => {
            match pilot_address(pilot, cli.kubeconfig, cli.context).await {
                Ok(address) => inspect::proxy_status(&address).await,
                Err(e) => Err(e),
            }
        }
        Command::Graph(args) => graph::run(args).await,
        Command::Install(args) => install::run(&args),
        Command::Dashboard(args) => graph::dashboard(&args),
        Command::Uninstall(args) => match cluster_client(cli.kubeconfig, cli.context).await {
            Ok(client) => install::uninstall::run(&args, client).await,
            Err(e) => Err(e),
        },
        Command::Analyze { pilot } => match pilot_address(pilot, cli.kubeconfig, cli.context).await
        {
            Ok(address) => inspect::analyze(&address).await,
            Err(e) => Err(e),
        },
        Command::ProxyConfig {
            section,
            admin,
            output,
        } => match admin_address(&admin, cli.kubeconfig, cli.context).await {
            Ok(address) => inspect::proxy_config(section, &address, output != Output::Table).await,
            Err(e) => Err(e),
        },
        command => match backend(cli.store, cli.kubeconfig, cli.context) {
            Err(e) => Err(e),
            Ok(backend) => match open(backend).await {
                Err(e) => Err(e),
                Ok(store) => {
                    let store = store.as_ref();
                    match command {
                        Command::Create { files } => {
                            rules::write(store, &files, Change::Create).await
                        }
                        Command::Replace { files } => {
                            rules::write(store, &files, Change::Replace).await
                        }
                        Command::Delete {
                            files,
                            kind,
                            names,
                            namespace,
                        } => {
                            rules::delete(store, &files, kind.as_deref(), &names, &namespace).await
                        }
                        Command::Get {
                            kind,
                            name,
                            namespace,
                            all_namespaces,
                            output,
                        } => {
                            let ns = (!all_namespaces).then_some(namespace.as_str());
                            rules::get(store, &kind, name.as_deref(), ns, output).await
                        }
                        Command::Validate { .. }
                        | Command::Convert { .. }
                        | Command::Demo { .. }
                        | Command::KubeInject(_)
                        | Command::Cluster(_)
                        | Command::ProxyStatus { .. }
                        | Command::Graph(_)
                        | Command::Install(_)
                        | Command::Uninstall(_)
                        | Command::Dashboard(_)
                        | Command::Analyze { .. }
                        | Command::ProxyConfig { .. } => unreachable!("handled above"),
                    }
                }
            },
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
