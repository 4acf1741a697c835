//! svcb: the seed's notify service. `GET /notify?msg=M` sends M to the
//! external msgd (`/send?msg=M`), forwarding the tracing headers, and
//! answers 500 when that fails, as in the seed. Without `--msgd` it only
//! says who served the request.

use clap::Parser;
use http::StatusCode;
use mesh_samples::{Service, answer, get, query_param, run, serve};

/// svcb: the seed's notify service (GET /notify).
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    service: Service,
    /// msgd's base URL (the seed's `http://10.100.35.27:9997`).
    #[arg(long, env = "MSGD_URL")]
    msgd: Option<String>,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let (version, msgd, proxy) = (a.service.version, a.msgd, a.service.proxy);
    run(serve(a.service.listen, move |req| {
        let (version, msgd) = (version.clone(), msgd.clone());
        async move {
            let me = format!("service_b:{version}");
            let mut body = format!("{me} is serving the request...\n");
            let Some(msgd) = msgd else {
                return answer(StatusCode::OK, &version, body);
            };
            let msg = query_param(req.uri(), "msg").unwrap_or_default();
            match get(&format!("{msgd}/send?msg={msg}"), req.headers(), proxy).await {
                Ok((status, _)) if status.is_success() => {
                    body.push_str(&format!("{me} send msg ok\n"));
                    answer(StatusCode::OK, &version, body)
                }
                Ok((status, text)) => {
                    body.push_str(&format!(
                        "{me} send msg error: msgd answered {status}: {}\n",
                        text.trim()
                    ));
                    answer(StatusCode::INTERNAL_SERVER_ERROR, &version, body)
                }
                Err(e) => {
                    body.push_str(&format!("{me} send msg error: {e}\n"));
                    answer(StatusCode::INTERNAL_SERVER_ERROR, &version, body)
                }
            }
        }
    }))
}
