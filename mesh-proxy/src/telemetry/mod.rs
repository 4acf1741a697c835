//! What the proxy tells about the traffic it carries: counters
//! ([`stats`]) and request ids and trace context ([`trace`]).

pub mod stats;
pub mod trace;
