//! `plan` over arbitrary bytes, split into records at newlines.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let records: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let outcomes = common::destination().plan(&records);
    common::check(&records, &outcomes);
});
