//! `volcache convert` against the reference, `qemu-img convert -O raw`, on images qemu-img made:
//! byte for byte, and by allocation (within one file system block per extent).

use std::path::{Path, PathBuf};

use crate::fixtures::{allocated, assert_same_bytes, cloud_like_raw, extents, run, volcache, MIB};

/// 96 MiB + 3.5 KiB: no multiple of 64 KiB or 2 MiB clusters.
const SIZE: u64 = 96 * MIB + 7 * 512;

struct Case {
    dir: tempfile::TempDir,
    raw: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("source.raw");
        cloud_like_raw(&raw, SIZE);
        Case { dir, raw }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// qemu-img converts the source raw into `name` with `opts`.
    fn qcow2(&self, name: &str, opts: &[&str]) -> PathBuf {
        let out = self.path(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend([self.raw.to_str().unwrap(), out.to_str().unwrap()]);
        run("qemu-img", &args);
        out
    }

    /// Converts `image` with volcache and with qemu-img, and compares the results.
    fn check(&self, image: &Path) -> serde_json::Value {
        let ours = self.path("ours.raw");
        let theirs = self.path("theirs.raw");
        let _ = std::fs::remove_file(&ours);
        let out = volcache(&["convert", image.to_str().unwrap(), ours.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}: {}", image.display(), String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        run("qemu-img", &["convert", "-O", "raw", image.to_str().unwrap(), theirs.to_str().unwrap()]);
        assert_same_bytes(&ours, &theirs);
        assert_same_bytes(&ours, &self.raw);
        let (a, b) = (allocated(&ours), allocated(&theirs));
        let slack = 4096 * extents(&theirs).max(1) as u64;
        assert!(a.abs_diff(b) <= slack, "{}: volcache allocates {a}, qemu-img {b} (slack {slack})", image.display());
        assert_eq!(report["virtual_size"], SIZE);
        report
    }
}

#[test]
fn raw_matches_qemu_img_and_skips_holes_unread() {
    let case = Case::new();
    let report = case.check(&case.raw);
    assert_eq!(report["format"], "raw");
    assert_eq!(report["holes_from"], "seek-data");
    // Only the data extents were read; the 1 MiB of written zeros was read but not written.
    assert!(report["bytes_read"].as_u64().unwrap() < SIZE / 3, "{report}");
    assert!(report["zero_bytes_skipped"].as_u64().unwrap() >= MIB, "{report}");
    assert!(report["hole_bytes_skipped"].as_u64().unwrap() > SIZE / 2, "{report}");
}

#[test]
fn qcow2_v2_and_v3_match_qemu_img() {
    let case = Case::new();
    for (name, opts) in [("v2.qcow2", &["-o", "compat=0.10"][..]), ("v3.qcow2", &["-o", "compat=1.1"][..])] {
        let report = case.check(&case.qcow2(name, opts));
        assert_eq!(report["format"], "qcow2");
        assert_eq!(report["holes_from"], "qcow2-tables");
    }
}

#[test]
fn qcow2_cluster_sizes_64k_and_2m_match_qemu_img() {
    let case = Case::new();
    for cs in ["65536", "2097152", "4096"] {
        case.check(&case.qcow2(&format!("cs{cs}.qcow2"), &["-o", &format!("cluster_size={cs}")]));
    }
}

#[test]
fn compressed_qcow2_deflate_and_zstd_match_qemu_img() {
    let case = Case::new();
    case.check(&case.qcow2("deflate.qcow2", &["-c"]));
    case.check(&case.qcow2("zstd.qcow2", &["-c", "-o", "compression_type=zstd"]));
    case.check(&case.qcow2("zstd-2m.qcow2", &["-c", "-o", "compression_type=zstd,cluster_size=2097152"]));
}

#[test]
fn zero_clusters_and_extended_l2_match_qemu_img() {
    let case = Case::new();
    // Turn data into zero clusters (v3 zero flag, and extended-L2 zero subclusters).
    for (name, opts) in [("zero.qcow2", "compat=1.1"), ("extl2.qcow2", "extended_l2=on,cluster_size=65536")] {
        let img = case.qcow2(name, &["-o", opts]);
        let p = img.to_str().unwrap();
        run("qemu-io", &["-f", "qcow2", "-c", "write -z 6M 2M", "-c", "write -z 40k 8k", "-c", "write -z 5M 4k", p]);
        // The source raw must say the same, for the byte comparison with it.
        run(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -z 6M 2M",
                "-c",
                "write -z 40k 8k",
                "-c",
                "write -z 5M 4k",
                case.raw.to_str().unwrap(),
            ],
        );
        case.check(&img);
    }
}

#[test]
fn dense_output_has_the_same_bytes_and_all_blocks() {
    let case = Case::new();
    let (thin, dense) = (case.path("thin.raw"), case.path("dense.raw"));
    let img = case.qcow2("d.qcow2", &[]);
    assert!(volcache(&["convert", img.to_str().unwrap(), thin.to_str().unwrap()]).status.success());
    assert!(volcache(&["convert", "--dense", img.to_str().unwrap(), dense.to_str().unwrap()]).status.success());
    assert_same_bytes(&thin, &dense);
    assert!(allocated(&dense) >= SIZE - 4096);
    assert!(allocated(&thin) < SIZE / 3);
}

fn failing(args: &[&str], expect: &str) {
    let out = volcache(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line, please: {err}");
    assert!(err.contains(expect), "{args:?}: expected {expect:?} in {err}");
}

fn leftovers(dir: &Path, keep: &[&Path]) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| !keep.contains(&p.as_path())).collect()
}

#[test]
fn corrupt_and_unsupported_images_fail_with_one_clear_line_and_leave_nothing() {
    let case = Case::new();
    let good = case.qcow2("good.qcow2", &[]);
    let data = std::fs::read(&good).unwrap();
    let out = case.path("out.raw");
    let o = out.to_str().unwrap();

    let truncated = case.path("truncated.qcow2");
    std::fs::write(&truncated, &data[..data.len() / 2]).unwrap();
    failing(&["convert", truncated.to_str().unwrap(), o], "truncated image");

    let mut bad_bits = data.clone();
    bad_bits[23] = 40; // cluster_bits
    let bad = case.path("bits.qcow2");
    std::fs::write(&bad, &bad_bits).unwrap();
    failing(&["convert", bad.to_str().unwrap(), o], "cluster_bits");

    let mut huge_l1 = data.clone();
    huge_l1[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    let l1 = case.path("l1.qcow2");
    std::fs::write(&l1, &huge_l1).unwrap();
    failing(&["convert", l1.to_str().unwrap(), o], "L1 table");

    let backed = case.path("backed.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", good.to_str().unwrap(), backed.to_str().unwrap()],
    );
    failing(&["convert", backed.to_str().unwrap(), o], "backing file");

    let encrypted = case.path("enc.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "--object",
            "secret,id=s0,data=secret123",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0",
            encrypted.to_str().unwrap(),
            "1M",
        ],
    );
    failing(&["convert", encrypted.to_str().unwrap(), o], "encrypted");

    failing(&["convert", "--format", "raw", good.to_str().unwrap(), o], "declared raw");
    failing(&["convert", "--format", "vmdk", good.to_str().unwrap(), o], "--format");
    failing(
        &["convert", "--md5", "00000000000000000000000000000000", good.to_str().unwrap(), o],
        "md5 checksum mismatch",
    );
    failing(&["convert", "/nonexistent/image", o], "/nonexistent/image");

    let keep: Vec<&Path> = vec![&case.raw, &good, &truncated, &bad, &l1, &backed, &encrypted];
    assert_eq!(leftovers(case.dir.path(), &keep), Vec::<PathBuf>::new(), "a failed convert left files behind");
}

#[test]
fn checksums_that_match_are_accepted() {
    let case = Case::new();
    let img = case.qcow2("sum.qcow2", &[]);
    let md5 = String::from_utf8(run("md5sum", &[img.to_str().unwrap()]).stdout).unwrap();
    let sha = String::from_utf8(run("sha512sum", &[img.to_str().unwrap()]).stdout).unwrap();
    let out = case.path("sum.raw");
    let args = ["convert", "--md5", &md5[..32], "--sha512", &sha[..128], img.to_str().unwrap(), out.to_str().unwrap()];
    let res = volcache(&args);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_same_bytes(&out, &case.raw);
}

/// Random damage anywhere in a real qcow2 file: the reader answers with an error or with
/// output, and never panics or allocates what the damage asks for.
#[test]
fn damaged_qcow2_never_panics() {
    use volcache::image::convert::{convert, ConvertOptions};
    use volcache::image::source::Location;

    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("small.raw");
    run("qemu-img", &["create", "-q", "-f", "raw", raw.to_str().unwrap(), "4M"]);
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x61 0 300k", "-c", "write -P 0x62 2M 64k", raw.to_str().unwrap()]);
    let mut rng = crate::fixtures::Rng::new(7);
    let kinds: [&[&str]; 4] =
        [&["-o", "cluster_size=4096"], &["-c"], &["-o", "extended_l2=on"], &["-o", "compat=0.10,cluster_size=4096"]];
    for (n, opts) in kinds.iter().enumerate() {
        let img = dir.path().join(format!("small{n}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend([raw.to_str().unwrap(), img.to_str().unwrap()]);
        run("qemu-img", &args);
        let pristine = std::fs::read(&img).unwrap();
        for round in 0..150 {
            let mut bytes = pristine.clone();
            for _ in 0..1 + rng.below(6) {
                // Mostly the header and tables, which sit in the first clusters.
                let limit = if rng.below(3) == 0 { bytes.len() as u64 } else { 64 * 1024.min(bytes.len() as u64) };
                let at = rng.below(limit) as usize;
                bytes[at] = rng.next() as u8;
            }
            let damaged = dir.path().join("damaged.qcow2");
            std::fs::write(&damaged, &bytes).unwrap();
            let out = dir.path().join(format!("out-{n}-{round}.raw"));
            let result = convert(&Location::File(damaged), &out, &ConvertOptions::default(), &mut |_, _| {});
            if result.is_ok() {
                std::fs::remove_file(&out).unwrap();
            } else {
                assert!(!out.exists(), "a failed conversion left {}", out.display());
            }
        }
    }
}

#[test]
fn foreign_container_formats_are_refused_by_name_not_copied_as_raw() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        ("vdi", &[], "VDI"),
        ("qed", &[], "QED"),
        ("parallels", &[], "Parallels"),
        ("vmdk", &[], "VMDK"),
        ("vmdk", &["-o", "subformat=streamOptimized"], "VMDK"),
        ("vmdk", &["-o", "subformat=monolithicFlat"], "VMDK (text descriptor)"),
        ("vhdx", &[], "VHDX"),
        ("vpc", &[], "VHD"),
        ("luks", &["--object", "secret,id=sec0,data=volcache", "-o", "key-secret=sec0"], "LUKS"),
    ];
    for (i, (format, extra, name)) in cases.iter().enumerate() {
        let src = dir.path().join(format!("{i}.{format}"));
        let mut args = vec!["create", "-q", "-f", format];
        args.extend_from_slice(extra);
        args.extend([src.to_str().unwrap(), "16M"]);
        run("qemu-img", &args);
        let dst = dir.path().join(format!("{i}.raw"));
        for declared in ["auto", "raw"] {
            let out = volcache(&["convert", "--format", declared, src.to_str().unwrap(), dst.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{format} {extra:?} was converted as {declared}");
            assert!(stderr.contains(name) && stderr.contains("does not decode"), "{format}: {stderr}");
            assert!(!dst.exists(), "{format}: nothing is left behind");
        }
    }
}

#[test]
fn a_reader_that_stops_early_does_not_fail_a_successful_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    cloud_like_raw(&src, 8 * MIB);
    let dst = dir.path().join("dst.raw");
    // stdout is a pipe whose reader has gone: every write is EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = crate::fixtures::volcache_cmd()
        .args(["convert", src.to_str().unwrap(), dst.to_str().unwrap()])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);
    assert_same_bytes(&src, &dst);
}

#[test]
fn a_symlink_destination_is_written_through_and_a_device_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    cloud_like_raw(&src, 16 * MIB);
    let image = std::fs::read(&src).unwrap();

    // A link to an existing file, and a dangling link: the targets get the image, the links stay.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("old.raw"), b"old contents").unwrap();
    std::os::unix::fs::symlink(elsewhere.join("old.raw"), dir.path().join("link.raw")).unwrap();
    std::os::unix::fs::symlink("elsewhere/new.raw", dir.path().join("dangling.raw")).unwrap();
    for (link, target) in [("link.raw", "old.raw"), ("dangling.raw", "new.raw")] {
        let out = volcache(&["convert", src.to_str().unwrap(), dir.path().join(link).to_str().unwrap()]);
        assert!(out.status.success(), "{link}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            std::fs::symlink_metadata(dir.path().join(link)).unwrap().file_type().is_symlink(),
            "{link} stays a link"
        );
        assert_eq!(std::fs::read(elsewhere.join(target)).unwrap(), image, "{link} -> {target}");
    }

    // A character device: written in place, never replaced by a regular file.
    let out = volcache(&["convert", src.to_str().unwrap(), "/dev/null"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    // A block device holding old data: every byte of the image lands, zeros included.
    let backing = dir.path().join("disk.img");
    std::fs::write(&backing, vec![0xee; 32 * MIB as usize]).unwrap();
    let device = String::from_utf8(run("losetup", &["-f", "--show", backing.to_str().unwrap()]).stdout).unwrap();
    let device = device.trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(device.clone());
    let out = volcache(&["convert", src.to_str().unwrap(), &device]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata(&device).unwrap().file_type().is_block_device(), "the device node stays");
    let written = std::fs::read(&backing).unwrap();
    assert!(written[..image.len()] == image[..], "the device holds the image, old bytes overwritten");
    assert!(written[image.len()..].iter().all(|&b| b == 0xee), "nothing past the image is touched");

    // An image larger than the device is refused.
    let big = dir.path().join("big.raw");
    cloud_like_raw(&big, 48 * MIB);
    let out = volcache(&["convert", big.to_str().unwrap(), &device]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the device holds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sizes_that_are_not_whole_sectors_match_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    // A raw image of 1000 bytes reads as 1024 (padded with zeros).
    let raw = dir.path().join("odd.raw");
    std::fs::write(&raw, (0..1000u32).map(|i| (i % 251) as u8 + 1).collect::<Vec<u8>>()).unwrap();
    // A qcow2 whose header says 1000 bytes reads as 512 (rounded down).
    let qcow = dir.path().join("odd.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "1M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x61 0 4k", qcow.to_str().unwrap()]);
    let mut bytes = std::fs::read(&qcow).unwrap();
    bytes[24..32].copy_from_slice(&1000u64.to_be_bytes());
    std::fs::write(&qcow, bytes).unwrap();
    for src in [&raw, &qcow] {
        let ours = dir.path().join("ours.out");
        let theirs = dir.path().join("theirs.out");
        let out = volcache(&["convert", src.to_str().unwrap(), ours.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        run("qemu-img", &["convert", "-O", "raw", src.to_str().unwrap(), theirs.to_str().unwrap()]);
        assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap(), "{}", src.display());
    }
}

/// A qcow2 image with 64 KiB of data at offset 0, as `compat` (0.10 = version 2, 1.1 = 3).
fn small_qcow2(path: &std::path::Path, compat: &str) {
    run("qemu-img", &["create", "-q", "-f", "qcow2", "-o", &format!("compat={compat}"), path.to_str().unwrap(), "4M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x61 0 64k", path.to_str().unwrap()]);
}

/// (offset of L1[0], offset of L2[0]) in a qcow2 file.
fn first_tables(bytes: &[u8]) -> (usize, usize) {
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let l1 = be64(40) as usize;
    let l2 = (be64(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    (l1, l2)
}

#[test]
fn qcow2_metadata_that_qemu_img_refuses_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let patched = |name: &str, compat: &str, patch: &dyn Fn(&mut Vec<u8>)| {
        let path = dir.path().join(name);
        small_qcow2(&path, compat);
        let mut bytes = std::fs::read(&path).unwrap();
        patch(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let cases = [
        // An L2 table offset that is not cluster-aligned (today: a silent all-zero disk).
        patched("l2-unaligned.qcow2", "1.1", &|b| {
            let (l1, _) = first_tables(b);
            let entry = u64::from_be_bytes(b[l1..l1 + 8].try_into().unwrap()) + 512;
            b[l1..l1 + 8].copy_from_slice(&entry.to_be_bytes());
        }),
        // The zero flag on a version 2 image, where that bit is reserved.
        patched("v2-zero-flag.qcow2", "0.10", &|b| {
            let (_, l2) = first_tables(b);
            b[l2 + 7] |= 1;
        }),
        // A zero cluster whose host offset is not cluster-aligned.
        patched("zero-unaligned.qcow2", "1.1", &|b| {
            let (_, l2) = first_tables(b);
            let entry = u64::from_be_bytes(b[l2..l2 + 8].try_into().unwrap()) | 512 | 1;
            b[l2..l2 + 8].copy_from_slice(&entry.to_be_bytes());
        }),
    ];
    for src in cases {
        let theirs = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw", src.to_str().unwrap(), dir.path().join("theirs.raw").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!theirs.status.success(), "{}: qemu-img accepts it, the test is wrong", src.display());
        let ours = dir.path().join("ours.raw");
        let out = volcache(&["convert", src.to_str().unwrap(), ours.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("corrupt"), "{}: {stderr}", src.display());
        assert!(!ours.exists(), "nothing is left behind");
    }
}
