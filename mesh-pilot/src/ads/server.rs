//! The ADS gRPC service for tonic's router, with a response body of its
//! own, sized for thousands of mostly idle streams.
//!
//! tonic's generated server encodes responses into one buffer per stream
//! that gathers ready responses (up to 32 KiB) and keeps the largest
//! allocation it ever grew to for the life of the stream: at 2000 proxies
//! that was 62 MB scoped and about a gigabyte unscoped (the last routes
//! response each kept, measured with heaptrack). Here each response is
//! framed into an allocation of its exact size that is freed once h2 has
//! written it; requests are decoded by tonic with a 1 KiB start buffer
//! (they are ACKs, mostly).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame};
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, Streaming};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Status};
use tonic_prost::ProstDecoder;

use super::flavor::{Delta, Flavor, Sotw};
use super::{Boxed, Discovery, peer_identity};

/// Bytes a stream's request buffer starts with: requests (ACKs) are
/// small, and the buffer grows to the message it must hold.
const REQUEST_BUFFER: usize = 1024;
/// The largest request pilot takes (a reconnecting proxy lists what it
/// holds).
const MAX_REQUEST: usize = 16 << 20;
/// The largest response pilot sends (an unscoped proxy's routes).
const MAX_RESPONSE: usize = 64 << 20;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// A stream's responses as gRPC frames, then its status as trailers.
struct Replies<T> {
    responses: mpsc::Receiver<Boxed<T>>,
    ended: bool,
}

/// One length-prefixed gRPC message (uncompressed), in an allocation of
/// its own size.
fn grpc_frame(message: &impl prost::Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > MAX_RESPONSE {
        return Err(Status::out_of_range(format!(
            "a response of {len} bytes is over pilot's limit of {MAX_RESPONSE}"
        )));
    }
    let mut framed = Vec::with_capacity(5 + len);
    framed.push(0);
    framed.extend_from_slice(&(len as u32).to_be_bytes());
    message
        .encode(&mut framed)
        .map_err(|e| Status::internal(format!("encoding a response: {e}")))?;
    Ok(Bytes::from(framed))
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if let Err(unrepresentable) = status.add_header(&mut map) {
        map.clear();
        let _ = unrepresentable.add_header(&mut map);
    }
    Frame::trailers(map)
}

impl<T: prost::Message> Body for Replies<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = match std::task::ready!(self.responses.poll_recv(cx)) {
            Some(reply) => (*reply).and_then(|m| grpc_frame(&m)),
            // The stream ended (the proxy went away): a clean end.
            None => Err(Status::ok("")),
        };
        Poll::Ready(Some(Ok(match next {
            Ok(data) => Frame::data(data),
            Err(status) => {
                self.ended = true;
                trailers(&status)
            }
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// Serves a stream of flavour `F` on `req`.
fn serve<F: Flavor, B>(
    discovery: &Discovery,
    req: http::Request<B>,
) -> http::Response<tonic::body::Body>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Status::unimplemented(format!(
            "pilot takes uncompressed requests only, not {encoding:?}"
        ))
        .into_http();
    }
    let decoder = ProstDecoder::<F::Request>::new(BufferSettings::new(REQUEST_BUFFER, 1));
    let request = Request::from_http(
        req.map(|body| Streaming::new_request(decoder, body, None, Some(MAX_REQUEST))),
    );
    let peer = match peer_identity(&request) {
        Ok(peer) => peer,
        Err(refused) => return refused.into_http(),
    };
    let responses = discovery.drive::<F>(request.into_inner(), peer);
    let mut response = http::Response::new(tonic::body::Body::new(Replies {
        responses,
        ended: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

/// The aggregated discovery service (both flavours) for tonic's router.
#[derive(Clone)]
pub struct AdsServer {
    discovery: Discovery,
}

impl AdsServer {
    pub(super) fn new(discovery: Discovery) -> Self {
        AdsServer { discovery }
    }
}

impl NamedService for AdsServer {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for AdsServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let response = match req.uri().path() {
            SOTW_PATH => serve::<Sotw, B>(&self.discovery, req),
            DELTA_PATH => serve::<Delta, B>(&self.discovery, req),
            other => Status::unimplemented(format!("{SERVICE} has no method {other}")).into_http(),
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}
