//! The mesh's data plane: a transparent sidecar proxy.
//!
//! It will capture a workload's inbound (15006) and outbound (15001) traffic,
//! route HTTP/1.1, HTTP/2, gRPC and TCP per request from xDS v3 configuration
//! served by mesh-pilot, and expose admin (15000), metrics (15090) and health
//! (15021) endpoints. Nothing is implemented yet: see the mesh-proxy issue.
