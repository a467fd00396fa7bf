#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| faultline_sim::fuzzing::trace_reader(data));
