fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "reload" {
        let _l = Box::leak(Box::new(mesh_runtime::log::init().unwrap()));
    }
    let t = std::time::Instant::now();
    for i in 0..10_000_000u64 {
        tracing::trace!(i, "x");
        let _s = tracing::trace_span!("s", i).entered();
    }
    eprintln!("{mode}: {:?} (max level {})", t.elapsed(), tracing::level_filters::LevelFilter::current());
}
