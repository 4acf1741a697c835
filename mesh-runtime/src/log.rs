//! Logging for the mesh's servers (mesh-proxy, mesh-pilot, mesh-inject,
//! mesh-ca): `tracing` events on stdout, one line each, as text for people
//! or as JSON for machines, with levels that can be changed while running.
//!
//! - `MESH_LOG` sets the levels: a default level and `target=level` pairs,
//!   comma-separated (`info,mesh_proxy::http=debug`). Default `info`.
//! - `MESH_LOG_FORMAT=json` writes JSON lines (the end-to-end tests read
//!   them); anything else, or nothing, writes text.
//!
//! The proxy's admin `/logging` and pilot's `/debug/logging` both go
//! through [`Logging::apply_query`], so the two speak the same language as
//! Envoy's admin `/logging`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `2026-12-02T10:00:00.000000Z  INFO mesh_proxy::xds: connected`.
    Text,
    /// One JSON object per event (`level`, `fields.message`, `target`, spans).
    Json,
}

impl Format {
    /// The format `MESH_LOG_FORMAT` asks for.
    pub fn from_env() -> Format {
        match std::env::var("MESH_LOG_FORMAT") {
            Ok(f) if f.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Text,
        }
    }
}

/// What is wrong with a level setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not one of the level names.
    #[error("unknown level `{0}`; levels are trace, debug, info, warn, error, off")]
    UnknownLevel(String),
    /// A target must look like a Rust module path.
    #[error("`{0}` is not a logger name (a module path such as mesh_proxy::http)")]
    BadTarget(String),
    /// A query without any setting.
    #[error("nothing to change: use level=LEVEL or TARGET=LEVEL")]
    Empty,
    /// A subscriber was installed before.
    #[error("logging was already set up in this process")]
    AlreadySet,
}

/// The levels in force: a default and per-target overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    /// Level for every target without its own.
    pub default: LevelFilter,
    /// Per-target levels (a target covers its submodules).
    pub targets: BTreeMap<String, LevelFilter>,
}

impl Levels {
    /// Reads `info,mesh_proxy::http=debug`.
    pub fn parse(directives: &str) -> Result<Levels, Error> {
        let mut levels = Levels {
            default: LevelFilter::INFO,
            targets: BTreeMap::new(),
        };
        for d in directives
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            match d.split_once('=') {
                Some((target, level)) => levels.set(target.trim(), level.trim())?,
                None => levels.default = level(d)?,
            }
        }
        Ok(levels)
    }

    /// Sets `target`'s level; `level` as a target sets the default (Envoy's
    /// `/logging?level=debug`).
    pub fn set(&mut self, target: &str, value: &str) -> Result<(), Error> {
        let value = level(value)?;
        if target == "level" {
            // Envoy's meaning: every logger, so overrides go too.
            self.default = value;
            self.targets.clear();
            return Ok(());
        }
        let valid = !target.is_empty()
            && target
                .split("::")
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !valid {
            return Err(Error::BadTarget(target.to_owned()));
        }
        self.targets.insert(target.to_owned(), value);
        Ok(())
    }

    /// Back into directive form (what `MESH_LOG` takes).
    pub fn directives(&self) -> String {
        let mut out = level_name(self.default).to_owned();
        for (t, l) in &self.targets {
            out.push_str(&format!(",{t}={}", level_name(*l)));
        }
        out
    }

    fn filter(&self) -> EnvFilter {
        // Every part was checked on the way in, so the filter accepts it.
        EnvFilter::builder()
            .parse(self.directives())
            .unwrap_or_else(|_| EnvFilter::new("info"))
    }
}

fn level(s: &str) -> Result<LevelFilter, Error> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Ok(LevelFilter::TRACE),
        "debug" => Ok(LevelFilter::DEBUG),
        "info" => Ok(LevelFilter::INFO),
        // Envoy's names for the same levels.
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "error" | "critical" => Ok(LevelFilter::ERROR),
        "off" => Ok(LevelFilter::OFF),
        _ => Err(Error::UnknownLevel(s.to_owned())),
    }
}

fn level_name(l: LevelFilter) -> &'static str {
    match l {
        LevelFilter::TRACE => "trace",
        LevelFilter::DEBUG => "debug",
        LevelFilter::INFO => "info",
        LevelFilter::WARN => "warn",
        LevelFilter::ERROR => "error",
        _ => "off",
    }
}

/// The installed logger: what the admin endpoints change.
pub struct Logging {
    levels: Mutex<Levels>,
    reload: reload::Handle<EnvFilter, Registry>,
}

/// Installs the process's logger from `MESH_LOG` and `MESH_LOG_FORMAT`; a
/// bad `MESH_LOG` is an error (nothing silently falls back).
pub fn init() -> Result<Logging, Error> {
    let directives = std::env::var("MESH_LOG").unwrap_or_default();
    init_with(Format::from_env(), Levels::parse(&directives)?)
}

/// Installs the process's logger.
pub fn init_with(format: Format, levels: Levels) -> Result<Logging, Error> {
    let (filter, reload) = reload::Layer::new(levels.filter());
    let ansi = std::io::stdout().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        Format::Text => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
            .try_init(),
        Format::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_ansi(false))
            .try_init(),
    };
    installed.map_err(|_| Error::AlreadySet)?;
    Ok(Logging {
        levels: Mutex::new(levels),
        reload,
    })
}

impl Logging {
    /// The levels in force, one `target: level` per line, the default first
    /// (as Envoy's `GET /logging` lists its loggers).
    pub fn list(&self) -> String {
        let levels = self.current();
        let mut out = format!("default: {}\n", level_name(levels.default));
        for (t, l) in &levels.targets {
            out.push_str(&format!("{t}: {}\n", level_name(*l)));
        }
        out
    }

    /// A copy of the levels in force.
    pub fn current(&self) -> Levels {
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies an admin query: `level=debug` (everything) and/or
    /// `TARGET=LEVEL` pairs joined by `&`. All or nothing: one bad pair
    /// changes nothing.
    pub fn apply_query(&self, query: &str) -> Result<Levels, Error> {
        let mut guard = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = guard.clone();
        let mut any = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (target, value) = pair.split_once('=').unwrap_or((pair, ""));
            next.set(&percent_decode(target), &percent_decode(value))?;
            any = true;
        }
        if !any {
            return Err(Error::Empty);
        }
        // The filter was built from checked parts; a failed reload only
        // means the subscriber is gone (process exit).
        let _ = self.reload.reload(next.filter());
        *guard = next.clone();
        tracing::info!(levels = %next.directives(), "log levels changed");
        Ok(next)
    }
}

/// Decodes `%3A%3A` (`::`) as curl and browsers send it.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The message of a JSON log line with its fields appended as ` key=value`
/// (what a text line says, without time and level); `None` for a line
/// that is not a JSON event. For supervisors and tests that follow a
/// server's output with `MESH_LOG_FORMAT=json`.
pub fn json_message(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?.as_object()?;
    let mut out = fields.get("message")?.as_str()?.to_owned();
    for (k, v) in fields.iter().filter(|(k, _)| *k != "message") {
        match v.as_str() {
            Some(s) => out.push_str(&format!(" {k}={s}")),
            None => out.push_str(&format!(" {k}={v}")),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_round_trip_and_errors_name_the_part() {
        let l = Levels::parse("debug, mesh_proxy::http=trace").unwrap();
        assert_eq!(l.directives(), "debug,mesh_proxy::http=trace");
        assert_eq!(
            Levels::parse("info,mesh_proxy=loud"),
            Err(Error::UnknownLevel("loud".into()))
        );
        assert_eq!(
            Levels::parse("a b=info"),
            Err(Error::BadTarget("a b".into()))
        );
        let mut l = Levels::parse("info,x=debug").unwrap();
        l.set("level", "warning").unwrap();
        assert_eq!(l.directives(), "warn", "level= sets every logger");
    }

    #[test]
    fn json_lines_read_back_as_text() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"listener bound","name":"l1","port":80},"target":"mesh_proxy"}"#;
        assert_eq!(
            json_message(line).unwrap(),
            "listener bound name=l1 port=80"
        );
        assert_eq!(json_message("ready"), None);
        assert_eq!(percent_decode("mesh_proxy%3A%3Ahttp"), "mesh_proxy::http");
    }
}
