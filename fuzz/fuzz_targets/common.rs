// Shared by both targets: open the bytes as a model file, then read every analysable
// tensor. Any panic, overflow or allocation beyond libFuzzer's limits is a bug.

use layerlab::io::{MemSource, ModelFile};

/// Values read per input at most, so one input cannot keep the fuzzer busy for long.
const MAX_VALUES: u64 = 1 << 22;

pub fn open_and_read(name: &str, data: &[u8]) {
    let src = MemSource::new(name, data.to_vec());
    let Ok(file) = ModelFile::open(&src) else {
        return;
    };
    let mut budget = MAX_VALUES;
    for t in file.tensors.iter().filter(|t| t.dtype.analysable()) {
        let n = t.elements();
        if n > budget {
            break;
        }
        budget -= n;
        if let Ok(values) = file.read_f32(&src, t) {
            assert_eq!(values.len() as u64, n, "{}: wrong number of values", t.name);
        }
    }
}
