#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    faultline_sim::fuzzing::checkpoint_reader(data);
    // The real-file store's blob framing, which wraps every checkpoint file on a GPU run.
    let _ = cuda_backend::store::decode_blob(data);
});
