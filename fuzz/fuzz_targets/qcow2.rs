//! Any bytes as a qcow2 image: the header parser and the table walker must answer with an error
//! or with output, never panic, hang on a bounded input, or allocate what the bytes ask for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volcache::image::qcow2::{self, Header};
use volcache::sparse::{Target, ThinWriter, WriteMode};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = Header::parse(data, data.len() as u64) else { return };
    // The output is a sparse file; bound the disk size so one input stays quick.
    if header.virtual_size > 64 << 30 {
        return;
    }
    let file = tempfile::tempfile().expect("temporary file");
    let mut out = ThinWriter::new(&file, WriteMode::Thin, Target::Fresh, 4096);
    let _ = qcow2::copy(data, &header, &mut out);
});
