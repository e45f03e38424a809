//! A frame from a peer: decoding never panics, and every message that decodes encodes back to
//! bytes that decode to the same message.
#![no_main]

use cohd_format::wire::{decode_frame, Item, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(items) = decode_frame(data) else {
        return;
    };
    for item in items {
        if let Item::Message { kind, payload, .. } = item {
            if let Ok(m) = Message::decode(kind, payload) {
                let again = Message::decode(m.kind(), &m.encode()).expect("re-decodes");
                assert_eq!(again, m);
            }
        }
    }
});
