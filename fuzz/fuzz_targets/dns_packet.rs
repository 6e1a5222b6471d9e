//! Any packet to weft's DNS server, from any asker, over UDP or TCP.
#![no_main]

use std::sync::OnceLock;

static TABLE: OnceLock<weft_dns::NameTable> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_dns::fuzzing::one(TABLE.get_or_init(|| weft_dns::fuzzing::table(4)), data)
});
