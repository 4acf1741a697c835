//! Rule commands: validate, create, replace, delete, get.

use std::process::ExitCode;

use anyhow::{Context, bail};
use mesh_pilot::store::{Applied, Change, Operation, RuleStore, StoredRule};
use mesh_rules::{Diagnostics, Kind, Loaded, RuleKey, Source, load};

use crate::Output;
use crate::files::{Input, read_inputs};

fn sources(inputs: &[Input]) -> Vec<Source<'_>> {
    inputs
        .iter()
        .map(|i| Source {
            name: &i.name,
            text: &i.text,
        })
        .collect()
}

fn print_problems(d: &Diagnostics) {
    for p in d.iter() {
        eprintln!("{p}");
    }
}

/// `meshctl validate`: each file is checked on its own (files in one folder
/// are often alternatives, like the seed's 50% and 100% route rules).
pub fn validate(args: &[String]) -> anyhow::Result<ExitCode> {
    let inputs = read_inputs(args)?;
    let (mut rules, mut skipped, mut problems) = (0, 0, 0);
    for input in &inputs {
        match load(&sources(std::slice::from_ref(input))) {
            Ok(loaded) => {
                for r in &loaded.rules {
                    println!("{}: {} is valid", r.origin.file, r.value.key());
                }
                for f in &loaded.foreign {
                    println!(
                        "{}: document {}: {} {} is not a mesh rule; skipped",
                        f.origin.file,
                        f.origin.document,
                        f.value.kind,
                        f.value.name.as_deref().unwrap_or("(unnamed)")
                    );
                }
                rules += loaded.rules.len();
                skipped += loaded.foreign.len();
            }
            Err(d) => {
                print_problems(&d);
                problems += d.len();
            }
        }
    }
    let files = inputs.len();
    if problems > 0 {
        eprintln!("{problems} problem(s) in {files} file(s)");
        return Ok(ExitCode::FAILURE);
    }
    println!("{files} file(s): {rules} rule(s) valid, {skipped} other object(s) skipped");
    Ok(ExitCode::SUCCESS)
}

/// The APIs `meshctl convert` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// Today's Istio kinds (networking.istio.io/v1).
    Today,
    /// Istio 0.4's kinds (config.istio.io/v1alpha2).
    #[value(name = "0.4")]
    V0_4,
}

/// `meshctl convert`: every rule of the files in `to`'s kinds, as YAML;
/// exit 2 when something could not be said (listed on stderr).
pub fn convert(args: &[String], to: Api) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_batch(args)? else {
        return Ok(ExitCode::FAILURE);
    };
    let rules: Vec<_> = loaded.rules.into_iter().map(|r| r.value).collect();
    let (out, losses) = match to {
        Api::Today => mesh_rules::upgrade::upgrade(&rules),
        Api::V0_4 => to_0_4(&rules),
    };
    for (i, r) in out.iter().enumerate() {
        if i > 0 {
            println!("---");
        }
        let mut v = r.to_value();
        if to == Api::V0_4 && r.api_version == mesh_rules::rules::MESH_API_VERSION {
            // Derived from today's kinds: written as Istio 0.4 wrote them.
            v["apiVersion"] = mesh_rules::rules::ISTIO_API_VERSION.into();
        }
        print!("{}", serde_yaml::to_string(&v)?);
    }
    for l in &losses {
        eprintln!("{}: {}: cannot be expressed: {}", l.rule, l.path, l.what);
    }
    if losses.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} thing(s) the target API cannot say were left out",
            losses.len()
        );
        Ok(ExitCode::from(2))
    }
}

/// The 0.4 rules of `rules`; a VirtualService's routes at gateways have
/// no 0.4 form (0.4 had no Gateway kind): they are losses.
fn to_0_4(rules: &[mesh_rules::Rule]) -> (Vec<mesh_rules::Rule>, Vec<mesh_rules::upgrade::Loss>) {
    let mut losses = Vec::new();
    let out = mesh_rules::convert::expand(rules)
        .into_iter()
        .filter(|r| {
            let mesh_rules::Spec::RouteRule(rr) = &r.spec else {
                return true;
            };
            let Some(at) = &rr.at_gateways else {
                return true;
            };
            let from = r
                .metadata
                .annotations
                .get(mesh_rules::convert::FROM_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| r.key().to_string());
            let what = format!(
                "routes for {} at gateways (Istio 0.4 had no Gateway kind)",
                at.host
            );
            let path = mesh_rules::FieldPath::root().key("spec").key("gateways");
            if !losses
                .iter()
                .any(|l: &mesh_rules::upgrade::Loss| l.rule == from && l.what == what)
            {
                losses.push(mesh_rules::upgrade::Loss {
                    rule: from,
                    path,
                    what,
                });
            }
            false
        })
        .collect();
    (out, losses)
}

/// Reads the files as one batch of rules; every problem is printed and
/// nothing is returned when any document is invalid or not a rule.
fn load_batch(args: &[String]) -> anyhow::Result<Option<Loaded>> {
    let inputs = read_inputs(args)?;
    let loaded = match load(&sources(&inputs)) {
        Ok(l) => l,
        Err(d) => {
            print_problems(&d);
            eprintln!("Error: {} problem(s) found; nothing was changed", d.len());
            return Ok(None);
        }
    };
    if !loaded.foreign.is_empty() {
        for f in &loaded.foreign {
            eprintln!(
                "{}:{}: document {}: {} {} ({}) is not a mesh rule: apply it with kubectl",
                f.origin.file,
                f.origin.position,
                f.origin.document,
                f.value.kind,
                f.value.name.as_deref().unwrap_or("(unnamed)"),
                f.value.api_version
            );
        }
        eprintln!("Error: nothing was changed");
        return Ok(None);
    }
    if loaded.rules.is_empty() {
        bail!("no rules found in {}", args.join(", "));
    }
    Ok(Some(loaded))
}

fn report(applied: &[Applied]) {
    for a in applied {
        match a.operation {
            Operation::Created => println!("Created config {} at revision {}", a.key, a.revision),
            Operation::Updated => println!("Updated config {} to revision {}", a.key, a.revision),
            Operation::Deleted => println!("Deleted config {} at revision {}", a.key, a.revision),
        }
    }
}

async fn apply(store: &dyn RuleStore, changes: Vec<Change>) -> anyhow::Result<ExitCode> {
    match store.apply(changes).await {
        Ok(applied) => {
            report(&applied);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("Error: {e}; nothing was changed");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `meshctl create -f` (`change` = `Change::Create`) and `meshctl replace
/// -f` (`Change::Replace`): every rule of the files as one batch.
pub async fn write(
    store: &dyn RuleStore,
    args: &[String],
    change: fn(mesh_rules::Rule) -> Change,
) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_batch(args)? else {
        return Ok(ExitCode::FAILURE);
    };
    apply(
        store,
        loaded.rules.into_iter().map(|r| change(r.value)).collect(),
    )
    .await
}

fn parse_kind(kind: &str) -> anyhow::Result<Kind> {
    Kind::from_cli(kind).with_context(|| {
        let names: Vec<_> = Kind::ALL.iter().map(|k| k.cli_name()).collect();
        format!(
            "unknown rule kind `{kind}`: use one of {}",
            names.join(", ")
        )
    })
}

/// `meshctl delete -f FILE…` or `meshctl delete KIND NAME…`.
pub async fn delete(
    store: &dyn RuleStore,
    files: &[String],
    kind: Option<&str>,
    names: &[String],
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let keys: Vec<RuleKey> = if !files.is_empty() {
        let Some(loaded) = load_batch(files)? else {
            return Ok(ExitCode::FAILURE);
        };
        loaded.rules.iter().map(|r| r.value.key()).collect()
    } else {
        let kind = parse_kind(kind.unwrap_or_default())?;
        if names.is_empty() {
            bail!("name the {kind} to delete: meshctl delete {kind} NAME");
        }
        names
            .iter()
            .map(|n| RuleKey {
                kind,
                namespace: namespace.to_owned(),
                name: n.clone(),
            })
            .collect()
    };
    apply(store, keys.into_iter().map(Change::Delete).collect()).await
}

fn object(s: &StoredRule) -> serde_json::Value {
    let mut v = s.rule.to_value();
    v["metadata"]["resourceVersion"] = serde_json::Value::String(s.revision.to_string());
    v
}

/// `meshctl get KIND [NAME]`.
pub async fn get(
    store: &dyn RuleStore,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let kind = if kind.eq_ignore_ascii_case("all") {
        None
    } else {
        Some(parse_kind(kind)?)
    };
    let snap = store.snapshot().await?;
    let rules: Vec<&StoredRule> = snap
        .rules
        .iter()
        .filter(|(k, _)| kind.is_none_or(|kind| k.kind == kind))
        .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
        .filter(|(k, _)| name.is_none_or(|n| k.name == n))
        .map(|(_, v)| v)
        .collect();
    if rules.is_empty() {
        if let (Some(n), Some(kind)) = (name, kind) {
            eprintln!(
                "Error: {kind} {}/{n} not found",
                namespace.unwrap_or(mesh_rules::rules::DEFAULT_NAMESPACE)
            );
            return Ok(ExitCode::FAILURE);
        }
        if output == Output::Table {
            eprintln!("No rules found.");
            return Ok(ExitCode::SUCCESS);
        }
    }
    match output {
        Output::Table => {
            let rows = rules
                .iter()
                .map(|r| {
                    let k = r.rule.key();
                    vec![
                        k.kind.cli_name().to_owned(),
                        k.name,
                        k.namespace,
                        r.revision.to_string(),
                    ]
                })
                .collect();
            crate::output::table(&["KIND", "NAME", "NAMESPACE", "REVISION"], rows);
        }
        Output::Yaml => {
            for (i, r) in rules.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml::to_string(&object(r))?);
            }
        }
        Output::Json => {
            let v = match (name, rules.as_slice()) {
                (Some(_), [one]) => object(one),
                _ => serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": rules.iter().map(|r| object(r)).collect::<Vec<_>>(),
                }),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
