//! The front of the HTTP path over arbitrary bytes: protocol sniffing never
//! panics and a verdict on some bytes never changes when more arrive; the
//! request-framing watch never panics and reaches the same verdict however
//! the bytes are split into reads.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use libfuzzer_sys::fuzz_target;
use mesh_proxy::framing::Framing;
use mesh_proxy::sniff::classify;

fn ambiguous(data: &[u8], piece: usize) -> bool {
    let flag = Arc::new(AtomicBool::new(false));
    let mut f = Framing::new(flag.clone());
    for chunk in data.chunks(piece.max(1)) {
        f.feed(chunk);
    }
    flag.load(Ordering::Acquire)
}

fuzz_target!(|data: &[u8]| {
    let full = classify(data);
    for n in 0..data.len() {
        if let Some(early) = classify(&data[..n]) {
            assert_eq!(Some(early), full, "verdict changed after {n} bytes");
        }
    }
    let whole = ambiguous(data, data.len());
    for piece in [1, 2, 3, 7, 64] {
        assert_eq!(ambiguous(data, piece), whole, "reads of {piece} bytes");
    }
});
