//! The ADS gRPC service as tonic serves it, with buffers sized for
//! thousands of mostly idle streams.
//!
//! tonic's generated server gives every stream an 8 KiB decode buffer and
//! an encode buffer that gathers ready responses up to 32 KiB before it
//! yields them; the buffer keeps the largest allocation it ever grew to
//! for the life of the stream. A push is four responses back to back, so
//! each proxy held ~32 KiB it no longer needed (62 MB at 2000 proxies,
//! measured with heaptrack). Here each response leaves on its own and
//! both buffers start at 1 KiB: a stream keeps about its last response.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::flavor::{Delta, Flavor, Sotw};
use super::{Discovery, ResponseStream, peer_identity};

/// Bytes a stream's buffers start with: requests (ACKs) are small, and a
/// buffer grows to the message it must hold.
const BUFFER_START: usize = 1024;
/// Every encoded response is handed on at once (never gathered with the
/// next into one growing buffer).
const YIELD_EACH: usize = 1;
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

/// prost's codec with [`BUFFER_START`] and [`YIELD_EACH`].
struct XdsCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Codec for XdsCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_START, YIELD_EACH))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_START, YIELD_EACH))
    }
}

/// One ADS method: a stream of flavour `F`.
struct Method<F>(Discovery, PhantomData<F>);

impl<F: Flavor> StreamingService<F::Request> for Method<F> {
    type Response = F::Response;
    type ResponseStream = ResponseStream<F::Response>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<F::Request>>) -> Self::Future {
        std::future::ready(
            peer_identity(&request)
                .map(|peer| Response::new(self.0.drive::<F>(request.into_inner(), peer))),
        )
    }
}

/// Serves a stream of flavour `F` on `req`.
async fn serve<F: Flavor, B>(
    discovery: Discovery,
    req: http::Request<B>,
) -> http::Response<tonic::body::Body>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let codec = XdsCodec::<F::Response, F::Request>(PhantomData);
    Grpc::new(codec)
        .apply_max_message_size_config(Some(MAX_REQUEST), Some(MAX_RESPONSE))
        .streaming(Method::<F>(discovery, PhantomData), req)
        .await
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
        let discovery = self.discovery.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move { Ok(serve::<Sotw, B>(discovery, req).await) }),
            DELTA_PATH => Box::pin(async move { Ok(serve::<Delta, B>(discovery, req).await) }),
            _ => Box::pin(async move {
                Ok(
                    Status::unimplemented(format!("{SERVICE} has no method {}", req.uri().path()))
                        .into_http(),
                )
            }),
        }
    }
}
