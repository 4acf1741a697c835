//! The mutating admission webhook (filled in below).
