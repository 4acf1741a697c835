//! Feeds arbitrary text to the rule loader: it must return rules or
//! positioned problems, never panic, and every rule it accepts must survive
//! a round trip through its JSON form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_rules::{Rule, Source, load};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load(&[Source { name: "fuzz.yaml", text }]) {
        Ok(loaded) => {
            for r in loaded.rules {
                let again = Rule::from_value(r.value.to_value()).expect("accepted rules re-read");
                assert_eq!(again, r.value);
            }
        }
        Err(problems) => {
            for p in problems.iter() {
                let located = p.error.position;
                assert!(located.is_some_and(|at| at.line >= 1 && at.column >= 1), "{p}");
            }
        }
    }
});
