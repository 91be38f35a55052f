//! The backend conformance suite, written once over `&dyn Backend` and run against every file
//! system the file backend meets: XFS with reflink (a real loop-mounted file system), ext4 and
//! tmpfs (thin copy). Then what only reflink promises: a clone takes no new space.

use std::path::{Path, PathBuf};

use volcache::backend::file::FileBackend;
use volcache::backend::{Backend, BackendError, CloneMode, Held};
use volcache::sparse::{Target, ThinWriter, WriteMode, DEFAULT_MIN_SPARSE};

use crate::fixtures::{run, MIB};

/// A real file system on a loop-mounted file, unmounted on drop: XFS with reflink, or ext4.
pub struct LoopFs {
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
}

impl LoopFs {
    pub fn xfs() -> LoopFs {
        LoopFs::new("mkfs.xfs", &["-q", "-m", "reflink=1"])
    }

    pub fn ext4() -> LoopFs {
        LoopFs::new("mkfs.ext4", &["-q", "-F"])
    }

    fn new(mkfs: &str, args: &[&str]) -> LoopFs {
        assert!(
            rustix::process::geteuid().is_root(),
            "the backend tests mount loop file systems and must run as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(1 << 30).unwrap();
        let mut mkfs_args = args.to_vec();
        mkfs_args.push(img.to_str().unwrap());
        run(mkfs, &mkfs_args);
        run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]);
        LoopFs { _dir: dir, mnt }
    }
}

impl LoopFs {
    /// A tmpfs of `bytes`, for tests that fill a file system.
    pub fn tmpfs(bytes: u64) -> LoopFs {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", mnt.to_str().unwrap()]);
        LoopFs { _dir: dir, mnt }
    }
}

/// Unmounts, retrying while a process (a daemon being reaped) still holds a file; as a last
/// resort detaches lazily and says so, so no test leaves a mount behind.
impl Drop for LoopFs {
    fn drop(&mut self) {
        for _ in 0..50 {
            let out = std::process::Command::new("umount").arg(&self.mnt).output();
            if out.as_ref().is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("WARNING: {} was still busy after 5 s; detaching it lazily (umount -l)", self.mnt.display());
        let lazy = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        if !lazy.is_ok_and(|s| s.success()) {
            eprintln!("ERROR: could not unmount {}: it is left mounted", self.mnt.display());
        }
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_bfree * st.f_frsize
}

/// 64 MiB volume with 8 MiB of data in three extents.
pub fn fill(backend: &dyn Backend, name: &str) {
    backend.create(name, 64 * MIB).unwrap();
    let dev = backend.open(name).unwrap();
    let mut w = ThinWriter::new(&*dev, WriteMode::Thin, Target::Fresh, DEFAULT_MIN_SPARSE);
    w.write_at(0, &vec![0x11; 4 * MIB as usize]).unwrap();
    w.write_at(20 * MIB, &vec![0x22; 3 * MIB as usize]).unwrap();
    w.write_at(63 * MIB, &vec![0x33; MIB as usize]).unwrap();
    w.finish(64 * MIB).unwrap();
    dev.sync_all().unwrap();
}

pub fn read(backend: &dyn Backend, name: &str) -> Vec<u8> {
    let dev = backend.open(name).unwrap();
    let mut buf = vec![0u8; backend.size(name).unwrap() as usize];
    dev.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// What every backend must do; returns the clone mode it used.
pub fn conformance(backend: &dyn Backend) -> CloneMode {
    backend.create("empty", 10 * MIB).unwrap();
    assert_eq!(backend.size("empty").unwrap(), 10 * MIB);
    assert!(backend.allocated_bytes("empty").unwrap() < MIB, "a new volume is sparse");

    fill(backend, "entry");
    let allocated = backend.allocated_bytes("entry").unwrap();
    // 8 MiB of data; a backend may round up to its allocation unit (RBD: the 4 MiB objects
    // the data touches, here at most 12 MiB), never anywhere near the 64 MiB provisioned.
    assert!((8 * MIB..=12 * MIB).contains(&allocated), "thin write allocated {allocated}");

    backend.seal("entry").unwrap();
    backend.seal("entry").unwrap();
    let mode = backend.clone_volume("entry", "user").unwrap();
    let original = read(backend, "entry");
    assert_eq!(read(backend, "user"), original);

    // Writing to the clone leaves the cache entry untouched.
    backend.open("user").unwrap().write_all_at(&[0xee; 8192], 21 * MIB).unwrap();
    assert_eq!(read(backend, "entry"), original);
    assert_ne!(read(backend, "user"), original);

    backend.resize("user", 100 * MIB).unwrap();
    assert_eq!(backend.size("user").unwrap(), 100 * MIB);
    assert!(read(backend, "user")[64 * MIB as usize..].iter().all(|&b| b == 0), "grown space reads as zeros");
    assert!(matches!(backend.resize("user", MIB), Err(BackendError::Shrink { .. })));

    assert!(matches!(backend.create("entry", MIB), Err(BackendError::Exists(_))));
    assert!(matches!(backend.clone_volume("nothing", "x"), Err(BackendError::NotFound(_))));
    assert!(!backend.exists("x").unwrap(), "a failed clone leaves nothing");
    assert!(matches!(backend.clone_volume("entry", "user"), Err(BackendError::Exists(_))));

    // Cloned and grown in one step (a hit larger than its entry): the source's bytes, then
    // zeros. A size below the source's is refused; the caller removes what it may have left.
    backend.clone_grown("entry", "grown", Some(100 * MIB)).unwrap();
    assert_eq!(backend.size("grown").unwrap(), 100 * MIB);
    let grown = read(backend, "grown");
    assert_eq!(grown[..64 * MIB as usize], original[..]);
    assert!(grown[64 * MIB as usize..].iter().all(|&b| b == 0), "grown space reads as zeros");
    assert!(matches!(backend.clone_grown("entry", "small", Some(MIB)), Err(BackendError::Shrink { .. })));
    backend.remove("small").unwrap();
    backend.remove("grown").unwrap();
    for bad in ["../escape", "", ".hidden", "a/b"] {
        assert!(matches!(backend.create(bad, 1), Err(BackendError::BadName(_))), "{bad:?}");
    }

    assert_eq!(backend.list().unwrap(), vec!["empty", "entry", "user"]);
    backend.remove("user").unwrap();
    backend.remove("user").unwrap();
    assert!(!backend.exists("user").unwrap());
    assert_eq!(read(backend, "entry"), original, "removing a clone leaves its source");

    // A source removed while a clone of it lives: the clone keeps its bytes, the source is
    // gone from the listing, and whatever it still holds is freed with the last clone.
    backend.clone_volume("entry", "user-2").unwrap();
    backend.remove("entry").unwrap();
    assert!(!backend.exists("entry").unwrap());
    assert_eq!(backend.list().unwrap(), vec!["empty", "user-2"]);
    assert_eq!(read(backend, "user-2"), original);
    backend.remove("user-2").unwrap();
    backend.remove("empty").unwrap();
    assert_eq!(backend.list().unwrap(), Vec::<String>::new());
    assert_eq!(backend.held().unwrap(), Held::default(), "nothing is held once the last clone is gone");
    mode
}

#[test]
fn file_backend_on_xfs_clones_by_reflink() {
    let xfs = LoopFs::xfs();
    let backend = FileBackend::new(xfs.mnt.join("volumes")).unwrap();
    assert_eq!(conformance(&backend), CloneMode::Reflink);
}

#[test]
fn reflink_clones_take_no_new_space() {
    let xfs = LoopFs::xfs();
    let backend = FileBackend::new(xfs.mnt.join("volumes")).unwrap();
    fill(&backend, "entry");
    let before = free_bytes(&xfs.mnt);
    for i in 0..8 {
        assert_eq!(backend.clone_volume("entry", &format!("user-{i}")).unwrap(), CloneMode::Reflink);
    }
    let used = before.saturating_sub(free_bytes(&xfs.mnt));
    // Eight clones of 8 MiB of data: copies would need 64 MiB; reflinks need only metadata.
    assert!(used < MIB, "8 reflink clones used {used} bytes");
}

#[test]
fn file_backend_on_ext4_falls_back_to_a_thin_copy() {
    let ext4 = LoopFs::ext4();
    let backend = FileBackend::new(ext4.mnt.join("volumes")).unwrap();
    assert_eq!(conformance(&backend), CloneMode::SparseCopy);
    fill(&backend, "entry");
    backend.clone_volume("entry", "copy").unwrap();
    let (a, b) = (backend.allocated_bytes("entry").unwrap(), backend.allocated_bytes("copy").unwrap());
    assert!(b <= a + 64 * 1024, "the thin copy allocates {b}, its source {a}: holes were filled");
}

#[test]
fn file_backend_on_tmpfs_falls_back_to_a_thin_copy() {
    let dir = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) is needed for this test");
    let backend = FileBackend::new(dir.path()).unwrap();
    assert_eq!(conformance(&backend), CloneMode::SparseCopy);
}
