//! A client's bytes through the controller's request path: decode, convert, validate, apply.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_api::fuzzing::one(data));
