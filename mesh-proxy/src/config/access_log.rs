//! An HTTP connection manager's `access_log`: Envoy's stdout logger
//! (`StdoutAccessLog`) with a format string or a JSON format, in the
//! common subset of Envoy's command operators. An operator outside it is
//! refused by path, never printed as-is.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::SystemTime;

use mesh_proto::envoy::config::accesslog::v3 as xlog;
use mesh_proto::envoy::config::core::v3::{data_source, substitution_format_string};
use mesh_proto::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log,
};
use mesh_proto::google::protobuf::value::Kind;
use mesh_rules::FieldError;

use super::{err, type_name, unpack};

const STDOUT: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// Envoy's default text format (`config_access_log_default_format`).
const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// The operators understood, for the refusal message.
const SUPPORTED: &str = "START_TIME, REQ(…), RESP(…), PROTOCOL, RESPONSE_CODE, RESPONSE_FLAGS, \
     BYTES_RECEIVED, BYTES_SENT, DURATION, UPSTREAM_HOST, UPSTREAM_CLUSTER, \
     DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, TRACE_ID";

/// One access log: how each line is made.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    format: Format,
    /// Request headers the lines show (alternatives: `X?Y`), lowercase;
    /// pseudo-headers `:method`, `:path`, `:authority`, `:scheme`.
    pub request_headers: Vec<Vec<String>>,
    /// Response headers the lines show.
    pub response_headers: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Format {
    Text(Vec<Piece>),
    Json(Vec<(String, Vec<Piece>)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Op(Op, Option<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    StartTime,
    /// A request header, by its slot in `request_headers`.
    Request(usize),
    /// A response header, by its slot in `response_headers`.
    Response(usize),
    Protocol,
    ResponseCode,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemote,
    DownstreamRemoteIp,
    TraceId,
}

/// What one finished request tells its access log line.
#[derive(Debug)]
pub struct Entry<'a> {
    /// When the request arrived.
    pub start: SystemTime,
    /// Values of [`AccessLog::request_headers`], in order.
    pub request_headers: &'a [Option<String>],
    /// Values of [`AccessLog::response_headers`], in order.
    pub response_headers: &'a [Option<String>],
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// The response status.
    pub code: u16,
    /// Response flags (`-` for none).
    pub flags: String,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// Milliseconds from the request's arrival to the response's end.
    pub duration_ms: u64,
    /// The endpoint last tried.
    pub upstream_host: Option<SocketAddr>,
    /// The cluster it belongs to.
    pub upstream_cluster: Option<&'a str>,
    /// The client's address.
    pub downstream: Option<SocketAddr>,
    /// The trace, when the request was traced.
    pub trace_id: Option<u128>,
}

impl AccessLog {
    /// Reads a connection manager's `access_log` list (at `path`): the
    /// stdout logger only, unfiltered.
    pub fn build_all(logs: &[xlog::AccessLog], path: &str) -> Result<Vec<AccessLog>, FieldError> {
        logs.iter()
            .enumerate()
            .map(|(i, l)| AccessLog::build(l, &format!("{path}[{i}]")))
            .collect()
    }

    fn build(l: &xlog::AccessLog, path: &str) -> Result<AccessLog, FieldError> {
        let tpath = format!("{path}.typed_config");
        let Some(xlog::access_log::ConfigType::TypedConfig(any)) = &l.config_type else {
            return Err(err(tpath, "an access logger needs its typed_config"));
        };
        if type_name(any) != STDOUT {
            return Err(err(
                tpath,
                format!(
                    "access logger {} is not supported (StdoutAccessLog is)",
                    type_name(any)
                ),
            ));
        }
        let stdout: StdoutAccessLog = unpack(any, &tpath)?;
        let fpath = format!("{tpath}.log_format");
        let mut log = AccessLog {
            format: Format::Text(Vec::new()),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        };
        use substitution_format_string::Format as F;
        log.format = match stdout.access_log_format {
            None => Format::Text(log.template(DEFAULT_FORMAT, &fpath)?),
            Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => match f.format {
                Some(F::TextFormatSource(source)) => match source.specifier {
                    Some(data_source::Specifier::InlineString(s)) => {
                        Format::Text(log.template(&s, &format!("{fpath}.text_format_source"))?)
                    }
                    _ => {
                        return Err(err(
                            format!("{fpath}.text_format_source"),
                            "only inline_string is supported",
                        ));
                    }
                },
                Some(F::JsonFormat(json)) => {
                    let mut fields = Vec::new();
                    // Keys in order, as Envoy prints them.
                    let mut entries: Vec<_> = json.fields.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    for (key, value) in entries {
                        let vpath = format!("{fpath}.json_format.{key}");
                        let Some(Kind::StringValue(s)) = &value.kind else {
                            return Err(err(vpath, "only string values are supported"));
                        };
                        fields.push((key.clone(), log.template(s, &vpath)?));
                    }
                    Format::Json(fields)
                }
                _ => return Err(err(fpath, "json_format or text_format_source is required")),
            },
        };
        Ok(log)
    }

    /// Splits `s` into literals and operators, registering the headers.
    fn template(&mut self, s: &str, path: &str) -> Result<Vec<Piece>, FieldError> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('%') {
            let Some(close) = rest[open + 1..].find('%').map(|c| open + 1 + c) else {
                return Err(err(path, format!("`%` at {open} is not closed: {s}")));
            };
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let token = &rest[open + 1..close];
            pieces.push(if token.is_empty() {
                Piece::Literal("%".into())
            } else {
                self.operator(token, path)?
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(pieces)
    }

    fn operator(&mut self, token: &str, path: &str) -> Result<Piece, FieldError> {
        // `NAME(arg):N` — an argument and a length limit, both optional.
        let (head, limit) = match token.rsplit_once("):") {
            Some((h, n)) => match n.parse() {
                Ok(n) => (format!("{h})"), Some(n)),
                Err(_) => return Err(err(path, format!("%{token}%: the length is not a number"))),
            },
            None => (token.to_owned(), None),
        };
        let headers =
            |arg: &str| -> Vec<String> { arg.split('?').map(|h| h.to_ascii_lowercase()).collect() };
        let op = if let Some(arg) = head.strip_prefix("REQ(").and_then(|a| a.strip_suffix(')')) {
            self.request_headers.push(headers(arg));
            Op::Request(self.request_headers.len() - 1)
        } else if let Some(arg) = head.strip_prefix("RESP(").and_then(|a| a.strip_suffix(')')) {
            self.response_headers.push(headers(arg));
            Op::Response(self.response_headers.len() - 1)
        } else {
            match head.as_str() {
                "START_TIME" => Op::StartTime,
                "PROTOCOL" => Op::Protocol,
                "RESPONSE_CODE" => Op::ResponseCode,
                "RESPONSE_FLAGS" => Op::ResponseFlags,
                "BYTES_RECEIVED" => Op::BytesReceived,
                "BYTES_SENT" => Op::BytesSent,
                "DURATION" => Op::Duration,
                "UPSTREAM_HOST" => Op::UpstreamHost,
                "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
                "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemote,
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteIp,
                "TRACE_ID" => Op::TraceId,
                _ => {
                    return Err(err(
                        path,
                        format!("operator %{token}% is not supported yet (supported: {SUPPORTED})"),
                    ));
                }
            }
        };
        Ok(Piece::Op(op, limit))
    }

    /// One line (ending in a newline) for `e`.
    pub fn line(&self, e: &Entry<'_>) -> String {
        match &self.format {
            Format::Text(pieces) => {
                let mut s = String::new();
                for p in pieces {
                    match p {
                        Piece::Literal(l) => s.push_str(l),
                        Piece::Op(op, limit) => s.push_str(&truncate(
                            value(*op, e).unwrap_or_else(|| "-".into()),
                            *limit,
                        )),
                    }
                }
                s
            }
            Format::Json(fields) => {
                let mut map = serde_json::Map::new();
                for (key, pieces) in fields {
                    map.insert(key.clone(), json_value(pieces, e));
                }
                let mut s = serde_json::Value::Object(map).to_string();
                s.push('\n');
                s
            }
        }
    }
}

/// A JSON value: a number or null for one numeric operator alone, as
/// Envoy types them; a string otherwise.
fn json_value(pieces: &[Piece], e: &Entry<'_>) -> serde_json::Value {
    use serde_json::Value;
    if let [Piece::Op(op, limit)] = pieces {
        let v = value(*op, e).map(|v| truncate(v, *limit));
        let numeric = matches!(
            op,
            Op::ResponseCode | Op::BytesReceived | Op::BytesSent | Op::Duration
        );
        return match v {
            None => Value::Null,
            Some(v) if numeric => v.parse::<u64>().map_or(Value::String(v), Value::from),
            Some(v) => Value::String(v),
        };
    }
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Literal(l) => s.push_str(l),
            Piece::Op(op, limit) => {
                s.push_str(&truncate(value(*op, e).unwrap_or_default(), *limit))
            }
        }
    }
    Value::String(s)
}

fn truncate(mut v: String, limit: Option<usize>) -> String {
    if let Some(n) = limit
        && v.len() > n
    {
        let mut cut = n;
        while !v.is_char_boundary(cut) {
            cut -= 1;
        }
        v.truncate(cut);
    }
    v
}

fn value(op: Op, e: &Entry<'_>) -> Option<String> {
    match op {
        Op::StartTime => Some(start_time(e.start)),
        Op::Request(i) => e.request_headers.get(i).cloned().flatten(),
        Op::Response(i) => e.response_headers.get(i).cloned().flatten(),
        Op::Protocol => Some(e.protocol.to_owned()),
        Op::ResponseCode => Some(e.code.to_string()),
        Op::ResponseFlags => Some(e.flags.clone()),
        Op::BytesReceived => Some(e.bytes_received.to_string()),
        Op::BytesSent => Some(e.bytes_sent.to_string()),
        Op::Duration => Some(e.duration_ms.to_string()),
        Op::UpstreamHost => e.upstream_host.map(|a| a.to_string()),
        Op::UpstreamCluster => e.upstream_cluster.map(str::to_owned),
        Op::DownstreamRemote => e.downstream.map(|a| a.to_string()),
        Op::DownstreamRemoteIp => e.downstream.map(|a| a.ip().to_string()),
        Op::TraceId => e.trace_id.map(|t| {
            let mut s = String::new();
            let _ = write!(s, "{t:032x}");
            s
        }),
    }
}

/// `2026-12-03T08:30:40.123Z`, as Envoy prints `%START_TIME%`.
fn start_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(text: &str) -> Result<AccessLog, FieldError> {
        let mut l = AccessLog {
            format: Format::Text(Vec::new()),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        };
        l.format = Format::Text(l.template(text, "f")?);
        Ok(l)
    }

    fn entry<'a>(req: &'a [Option<String>]) -> Entry<'a> {
        Entry {
            start: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_286_145_615),
            request_headers: req,
            response_headers: &[],
            protocol: "HTTP/1.1",
            code: 200,
            flags: "-".into(),
            bytes_received: 3,
            bytes_sent: 12,
            duration_ms: 7,
            upstream_host: Some("10.0.0.1:8080".parse().unwrap()),
            upstream_cluster: Some("outbound|80||svcb"),
            downstream: Some("10.0.0.2:4711".parse().unwrap()),
            trace_id: Some(0xab),
        }
    }

    #[test]
    fn text_lines_fill_operators_and_dash_what_is_missing() {
        let l = log("[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH):4%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %TRACE_ID% %REQ(USER-AGENT)% 100%%\n").unwrap();
        assert_eq!(
            l.request_headers,
            vec![
                vec![":method".to_owned()],
                vec!["x-envoy-original-path".into(), ":path".into()],
                vec!["user-agent".into()]
            ]
        );
        let req = [Some("GET".into()), Some("/pay?n=1".into()), None];
        assert_eq!(
            l.line(&entry(&req)),
            "[2026-12-03T08:22:25.615Z] \"GET /pay\" 200 - 3 12 7 10.0.0.1:8080 outbound|80||svcb 10.0.0.2 000000000000000000000000000000ab - 100%\n"
        );
    }

    #[test]
    fn unknown_operators_are_refused_with_the_supported_list() {
        let e = log("%REQ(:METHOD)% %UPSTREAM_TRANSPORT_FAILURE_REASON%").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("%UPSTREAM_TRANSPORT_FAILURE_REASON% is not supported yet")
                && text.contains("TRACE_ID"),
            "{text}"
        );
        assert!(log("100% sure").is_err(), "an unclosed %");
    }

    #[test]
    fn json_values_are_typed_as_envoy_types_them() {
        let mut l = log("").unwrap();
        let fields = vec![
            (
                "code".to_owned(),
                l.template("%RESPONSE_CODE%", "f").unwrap(),
            ),
            (
                "ua".to_owned(),
                l.template("%REQ(USER-AGENT)%", "f").unwrap(),
            ),
            (
                "line".to_owned(),
                l.template("%REQ(:METHOD)% %PROTOCOL%", "f").unwrap(),
            ),
        ];
        l.format = Format::Json(fields);
        let req = [None, Some("GET".into())];
        let v: serde_json::Value = serde_json::from_str(&l.line(&entry(&req))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 200, "ua": null, "line": "GET HTTP/1.1"})
        );
    }
}
