//! An oplog file of the earlier store layout (read when a store is moved into the database):
//! reading never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cohd_format::oplog::read(data);
});
