//! msgd: the seed's external message service (outside the mesh).
//! `GET /send?msg=M` logs the request and its headers (one JSON object per
//! line on stdout, and in `--log FILE` when given) and answers
//! `Msgd recv msg ok, msg= M`.

use std::io::Write;

use clap::Parser;
use http::StatusCode;
use mesh_samples::{answer, query_param, run, serve};

#[derive(Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:9997")]
    listen: std::net::SocketAddr,
    /// Also append each request to this file.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let log = a.log;
    run(serve(a.listen, move |req| {
        let log = log.clone();
        async move {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let line =
                serde_json::json!({"path": req.uri().to_string(), "headers": headers}).to_string();
            println!("{line}");
            if let Some(path) = &log
                && let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
            if req.uri().path() != "/send" {
                return answer(
                    StatusCode::NOT_FOUND,
                    "msgd",
                    "msgd: try /send?msg=...\n".into(),
                );
            }
            let msg = query_param(req.uri(), "msg").unwrap_or_default();
            answer(
                StatusCode::OK,
                "msgd",
                format!("Msgd recv msg ok, msg= {msg}\n"),
            )
        }
    }))
}
