//! Configuration parsing and validation never panics; a refusal always
//! names at least one problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = outreach_core::Destination::new(&text) {
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|e| !e.message.is_empty()));
    }
});
