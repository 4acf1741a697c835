//! svca: the seed's pay service. `GET /pay` pays, then asks svcb to
//! notify the customer (`/notify?msg=service_a:VERSION-pays-ok`),
//! forwarding the tracing headers. A failed notify makes `/pay` fail (500).

use clap::Parser;
use http::StatusCode;
use mesh_samples::{Service, answer, get, run, serve};

/// svca: the seed's pay service (GET /pay).
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    service: Service,
    /// svcb's base URL.
    #[arg(long, env = "SVCB_URL", default_value = "http://svcb")]
    svcb: String,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let (version, svcb, proxy) = (a.service.version, a.svcb, a.service.proxy);
    run(serve(a.service.listen, move |req| {
        let (version, svcb) = (version.clone(), svcb.clone());
        async move {
            let me = format!("service_a:{version}");
            if req.uri().path() != "/pay" {
                return answer(StatusCode::NOT_FOUND, &version, format!("{me}: try /pay\n"));
            }
            let mut body = format!("{me} is serving the request...\n{me} pays ok\n");
            let url = format!("{svcb}/notify?msg={me}-pays-ok");
            match get(&url, req.headers(), proxy).await {
                Ok((status, text)) if status.is_success() => {
                    body.push_str(&text);
                    body.push_str(&format!("{me} notify customer ok\n"));
                    answer(StatusCode::OK, &version, body)
                }
                Ok((status, text)) => {
                    body.push_str(&text);
                    body.push_str(&format!(
                        "{me} notify customer error: svcb answered {status}\n"
                    ));
                    answer(StatusCode::INTERNAL_SERVER_ERROR, &version, body)
                }
                Err(e) => {
                    body.push_str(&format!("{me} notify customer error: {e}\n"));
                    answer(StatusCode::INTERNAL_SERVER_ERROR, &version, body)
                }
            }
        }
    }))
}
