//! A manifest or signature from a peer: decoding never panics; a manifest that decodes encodes
//! to bytes that decode to it again.
#![no_main]

use cohd_format::manifest::{Manifest, MultiSignature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let _ = m.hash();
        if let Ok(again) = Manifest::decode(&m.encode()) {
            assert_eq!(again.encode(), m.encode());
        }
    }
    let _ = MultiSignature::decode(data);
});
