use std::io::Read;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;

use super::*;

const MIB: usize = 1 << 20;

/// 8 MiB: data, a zero run, scattered data blocks, a tail that is not a multiple of 4 KiB.
fn image() -> Vec<u8> {
    let mut img = vec![0u8; 8 * MIB + 1000];
    img[..MIB].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8 + 1);
    for k in 0..40 {
        let at = 3 * MIB + k * 64 * 1024 + 17;
        img[at..at + 100].fill(0xa5);
    }
    let n = img.len();
    img[n - 10..].fill(7);
    img
}

fn write_in_chunks(file: &File, mode: WriteMode, target: Target, data: &[u8], chunk: usize) -> WriteStats {
    let mut w = ThinWriter::new(file, mode, target, DEFAULT_MIN_SPARSE);
    for (i, c) in data.chunks(chunk).enumerate() {
        w.write_at((i * chunk) as u64, c).unwrap();
    }
    w.finish(data.len() as u64).unwrap()
}

fn read_all(file: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut f = file.try_clone().unwrap();
    std::io::Seek::rewind(&mut f).unwrap();
    f.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn thin_and_dense_read_back_the_same_bytes_and_thin_allocates_less() {
    let img = image();
    let thin = tempfile::tempfile().unwrap();
    let dense = tempfile::tempfile().unwrap();
    let t = write_in_chunks(&thin, WriteMode::Thin, Target::Fresh, &img, 3 * MIB + 5);
    let d = write_in_chunks(&dense, WriteMode::Dense, Target::Fresh, &img, 3 * MIB + 5);
    assert_eq!(read_all(&thin), img);
    assert_eq!(read_all(&dense), img);
    assert_eq!(t.data_bytes_written + t.zero_bytes_skipped + t.hole_bytes_skipped, img.len() as u64);
    assert_eq!(d.data_bytes_written, img.len() as u64);
    // 1 MiB of data, the 40 blocks of 4 KiB holding a byte run each, and the 1000-byte tail.
    assert_eq!(t.data_bytes_written, (MIB + 40 * 4096 + 1000) as u64);
    let (ta, da) = (sys::allocated_bytes(&thin).unwrap(), sys::allocated_bytes(&dense).unwrap());
    assert!(ta <= t.data_bytes_written + 4096, "thin file allocates {ta} for {} data", t.data_bytes_written);
    assert!(da >= img.len() as u64 - 4096, "dense file allocates {da}");
}

#[test]
fn zeros_over_old_data_are_punched_not_left_behind() {
    let img = image();
    let file = tempfile::tempfile().unwrap();
    FileExt::write_all_at(&file, &vec![0xffu8; img.len()], 0).unwrap();
    let before = sys::allocated_bytes(&file).unwrap();
    write_in_chunks(&file, WriteMode::Thin, Target::MayHoldData, &img, MIB);
    assert_eq!(read_all(&file), img, "old bytes must not survive where the image has zeros");
    assert!(sys::allocated_bytes(&file).unwrap() < before / 2);
}

#[test]
fn holes_are_counted_and_never_written() {
    let file = tempfile::tempfile().unwrap();
    let mut w = ThinWriter::new(&file, WriteMode::Thin, Target::Fresh, DEFAULT_MIN_SPARSE);
    w.write_at(0, &[1u8; 4096]).unwrap();
    w.hole(4096, 100 * MIB as u64).unwrap();
    w.write_at(4096 + 100 * MIB as u64, &[2u8; 4096]).unwrap();
    let stats = w.finish(200 * MIB as u64).unwrap();
    assert_eq!(stats.data_bytes_written, 8192);
    assert_eq!(stats.hole_bytes_skipped, 200 * MIB as u64 - 8192);
    assert!(sys::allocated_bytes(&file).unwrap() <= 64 * 1024);
    assert_eq!(file.metadata().unwrap().len(), 200 * MIB as u64);
}

#[test]
fn data_extents_skip_holes_on_this_file_system() {
    let file = tempfile::tempfile().unwrap();
    file.set_len(64 * MIB as u64).unwrap();
    FileExt::write_all_at(&file, &[1u8; 8192], 4 * MIB as u64).unwrap();
    FileExt::write_all_at(&file, &[1u8; 4096], 40 * MIB as u64).unwrap();
    let mut ext = DataExtents::new(&file, 64 * MIB as u64);
    let found: Vec<Extent> = ext.by_ref().collect::<io::Result<_>>().unwrap();
    assert!(ext.hole_aware());
    let covered: u64 = found.iter().map(|e| e.len).sum();
    assert!(covered < MIB as u64, "extents cover {covered} bytes: holes were not skipped ({found:?})");
    assert!(found.iter().any(|e| e.offset <= 4 * MIB as u64 && e.offset + e.len >= 4 * MIB as u64 + 8192));
    assert!(found.iter().any(|e| e.offset <= 40 * MIB as u64 && e.offset + e.len >= 40 * MIB as u64 + 4096));
}

#[test]
fn data_extents_fall_back_to_everything_on_a_pipe() {
    let (reader, _writer) = std::io::pipe().unwrap();
    let file = File::from(std::os::fd::OwnedFd::from(reader));
    let mut ext = DataExtents::new(&file, 1000);
    assert_eq!(ext.next().unwrap().unwrap(), Extent { offset: 0, len: 1000 });
    assert!(!ext.hole_aware());
    assert!(ext.next().is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Any chunking, any block size, any mix of zero and data runs: the bytes read back are the
    /// input, and every input byte is accounted for once.
    #[test]
    fn any_chunking_reads_back_exactly(runs in prop::collection::vec((0u8..3, 1usize..20_000), 1..30),
                                       chunk in 1usize..70_000, shift in 0u64..5000, block_pow in 9u32..16,
                                       dense in any::<bool>(), dirty in any::<bool>()) {
        let mut img = Vec::new();
        for (kind, len) in runs {
            img.extend(std::iter::repeat_n(if kind == 0 { 0 } else { kind * 60 }, len));
        }
        let file = tempfile::tempfile().unwrap();
        if dirty {
            FileExt::write_all_at(&file, &vec![0xeeu8; img.len() + shift as usize], 0).unwrap();
        }
        let mode = if dense { WriteMode::Dense } else { WriteMode::Thin };
        let target = if dirty { Target::MayHoldData } else { Target::Fresh };
        let mut w = ThinWriter::new(&file, mode, target, 1 << block_pow);
        // Starting at `shift`, as if the first bytes had been a hole.
        for (i, c) in img.chunks(chunk).enumerate() {
            w.write_at(shift + (i * chunk) as u64, c).unwrap();
        }
        let stats = w.finish(shift + img.len() as u64).unwrap();
        let out = read_all(&file);
        prop_assert!(out[..shift as usize].iter().all(|&b| b == 0));
        prop_assert_eq!(&out[shift as usize..], &img[..]);
        let accounted = if dense { stats.data_bytes_written } else { stats.data_bytes_written + stats.zero_bytes_skipped + stats.hole_bytes_skipped };
        prop_assert_eq!(accounted, shift + img.len() as u64);
    }
}

#[test]
fn a_pipelined_write_error_stops_the_reader_and_is_the_error_reported() {
    let named = tempfile::NamedTempFile::new().unwrap();
    let read_only = File::open(named.path()).unwrap(); // every write fails with EBADF
    let mut w = ThinWriter::new(&read_only, WriteMode::Thin, Target::Fresh, DEFAULT_MIN_SPARSE);
    let mut sent = 0u64;
    let result = pipelined(
        &mut w,
        |sink| {
            for i in 0..100_000u64 {
                sink.write_at(i * 4096, &[1u8; 4096])?;
                sent += 1;
            }
            Ok::<(), io::Error>(())
        },
        |e| e,
        &mut |_| {},
    );
    let err = result.unwrap_err();
    assert_ne!(err.kind(), io::ErrorKind::BrokenPipe, "the cause is the failed write, not the reader's broken pipe");
    assert!(sent < 100_000, "the reader kept going after the writer failed");
}

#[test]
fn a_pipelined_copy_writes_what_the_reader_sends() {
    let img = image();
    let file = tempfile::tempfile().unwrap();
    let mut w = ThinWriter::new(&file, WriteMode::Thin, Target::Fresh, DEFAULT_MIN_SPARSE);
    let mut reached = 0;
    pipelined(
        &mut w,
        |sink| {
            for (i, c) in img.chunks(MIB + 3).enumerate() {
                sink.write_at((i * (MIB + 3)) as u64, c)?;
            }
            Ok::<(), io::Error>(())
        },
        |e| e,
        &mut |at| reached = at,
    )
    .unwrap();
    w.finish(img.len() as u64).unwrap();
    assert_eq!(reached, img.len() as u64);
    assert_eq!(read_all(&file), img);
}
