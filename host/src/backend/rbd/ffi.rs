//! The only place volcache touches librados/librbd: small safe types over the C API.
//!
//! Most functions come from the `librbd-sys` / `librados-sys` crates (0.1.0). What they lack
//! or get wrong is declared here against librbd 16's `rbd/librbd.h`: the trash API,
//! `rbd_open_by_id`, `rbd_diff_iterate2`, `rbd_snap_exists`. Never call
//! `rados_ioctx_pool_stat` through `librados-sys` (its `rados_pool_stat_t` is 4 fields short
//! and the call corrupts memory) nor its `rados_clone_range` (gone from librados).
//!
//! Threading: a `rados_t` cluster handle, an I/O context used only for image operations and
//! an open `rbd_image_t` may be used from several threads at once (librbd locks inside), so
//! the handles are `Send + Sync`.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use librados_sys::{
    rados_conf_read_file, rados_conf_set, rados_connect, rados_create, rados_create_write_op, rados_ioctx_create,
    rados_ioctx_destroy, rados_ioctx_t, rados_read, rados_release_write_op, rados_shutdown, rados_t,
    rados_write_op_create, rados_write_op_operate, rados_write_op_write_full,
};

/// `LIBRADOS_CREATE_EXCLUSIVE`: creating an object that exists fails with `EEXIST`.
const CREATE_EXCLUSIVE: c_int = 1;
use librbd_sys::{
    rbd_aio_create_completion, rbd_aio_get_return_value, rbd_aio_release, rbd_aio_wait_for_complete, rbd_aio_write,
    rbd_clone, rbd_close, rbd_completion_t, rbd_create, rbd_discard, rbd_flatten, rbd_flush, rbd_get_features,
    rbd_get_parent_info, rbd_get_size, rbd_image_t, rbd_list, rbd_open, rbd_read, rbd_remove, rbd_resize,
    rbd_snap_create, rbd_snap_is_protected, rbd_snap_protect, rbd_snap_remove, rbd_snap_unprotect,
};

/// `rbd_trash_image_info_t` of librbd 16.
#[repr(C)]
struct TrashImageInfo {
    id: *mut c_char,
    name: *mut c_char,
    source: c_int,
    deletion_time: libc::time_t,
    deferment_end_time: libc::time_t,
}

type DiffCallback = unsafe extern "C" fn(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int;

#[link(name = "rbd")]
extern "C" {
    fn rbd_trash_move(io: rados_ioctx_t, name: *const c_char, delay: u64) -> c_int;
    fn rbd_trash_list(io: rados_ioctx_t, entries: *mut TrashImageInfo, num_entries: *mut usize) -> c_int;
    fn rbd_trash_list_cleanup(entries: *mut TrashImageInfo, num_entries: usize);
    fn rbd_trash_remove(io: rados_ioctx_t, id: *const c_char, force: bool) -> c_int;
    fn rbd_open_by_id(io: rados_ioctx_t, id: *const c_char, image: *mut rbd_image_t, snap: *const c_char) -> c_int;
    fn rbd_snap_exists(image: rbd_image_t, snap: *const c_char, exists: *mut bool) -> c_int;
    fn rbd_diff_iterate2(
        image: rbd_image_t,
        from_snap: *const c_char,
        offset: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: DiffCallback,
        arg: *mut c_void,
    ) -> c_int;
}

/// A librados/librbd return code as a result: negative values are `-errno`.
fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(r)
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} contains a NUL byte")))
}

/// Whether an error is `ENOENT`.
pub fn is_not_found(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// Whether an error is `EBUSY` (e.g. unprotecting a snapshot that has clones).
pub fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBUSY)
}

/// Whether an error is `EEXIST`.
pub fn is_exists(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EEXIST)
}

/// A connection to a Ceph cluster.
#[derive(Debug)]
pub struct Cluster {
    handle: rados_t,
}

// SAFETY: a connected `rados_t` may be used from any thread (librados serializes internally);
// volcache never changes its configuration after `connect`.
unsafe impl Send for Cluster {}
// SAFETY: as above.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Connects as `user` (the rados id without "client.", e.g. "admin") with the settings of
    /// `conf` (a ceph.conf), then `options` (name, value) on top.
    pub fn connect(user: &str, conf: Option<&Path>, options: &[(&str, &str)]) -> io::Result<Arc<Cluster>> {
        let user = cstr(user)?;
        let mut handle: rados_t = std::ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer and `user` a NUL-terminated string.
        check(unsafe { rados_create(&mut handle, user.as_ptr()) })?;
        // From here on `cluster` owns the handle and shuts it down on drop.
        let cluster = Cluster { handle };
        if let Some(conf) = conf {
            let path = cstr(&conf.to_string_lossy())?;
            // SAFETY: a created, not yet connected handle and a NUL-terminated path.
            check(unsafe { rados_conf_read_file(cluster.handle, path.as_ptr()) })
                .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", conf.display())))?;
        }
        for (name, value) in options {
            let (n, v) = (cstr(name)?, cstr(value)?);
            // SAFETY: a created, not yet connected handle and NUL-terminated strings.
            check(unsafe { rados_conf_set(cluster.handle, n.as_ptr(), v.as_ptr()) })
                .map_err(|e| io::Error::new(e.kind(), format!("setting {name} = {value}: {e}")))?;
        }
        // SAFETY: a configured handle; connecting may block until the monitors answer or the
        // `client_mount_timeout` passes.
        check(unsafe { rados_connect(cluster.handle) })
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to the Ceph cluster: {e}")))?;
        Ok(Arc::new(cluster))
    }

    /// An I/O context on `pool`.
    pub fn pool(self: &Arc<Self>, pool: &str) -> io::Result<Pool> {
        let name = cstr(pool)?;
        let mut io: rados_ioctx_t = std::ptr::null_mut();
        // SAFETY: a connected handle, a NUL-terminated name and a valid out-pointer.
        check(unsafe { rados_ioctx_create(self.handle, name.as_ptr(), &mut io) })
            .map_err(|e| io::Error::new(e.kind(), format!("opening pool {pool:?}: {e}")))?;
        Ok(Pool { io, _cluster: Arc::clone(self) })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: every `Pool` holds an `Arc<Cluster>`, so none outlives this; the handle was
        // created by `rados_create` and is shut down once.
        unsafe { rados_shutdown(self.handle) }
    }
}

/// An I/O context on one pool: where images are created, listed, cloned and removed.
#[derive(Debug)]
pub struct Pool {
    io: rados_ioctx_t,
    _cluster: Arc<Cluster>,
}

// SAFETY: the context is used for librbd image operations and whole-object reads and writes,
// which are safe to issue from several threads; its snapshot context and namespace are never
// changed.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: every `Image` opened here holds an `Arc<Pool>`, so none outlives this.
        unsafe { rados_ioctx_destroy(self.io) }
    }
}

/// One entry of the pool's trash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrashEntry {
    pub id: String,
    pub name: String,
}

/// Where an image was cloned from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub pool: String,
    pub image: String,
    pub snap: String,
}

impl Pool {
    /// Creates an image of `size` bytes with the pool's default features and object size.
    pub fn create(&self, name: &str, size: u64) -> io::Result<()> {
        let name = cstr(name)?;
        let mut order: c_int = 0;
        // SAFETY: a valid context, NUL-terminated name, and an out-pointer for the order.
        check(unsafe { rbd_create(self.io, name.as_ptr(), size, &mut order) }).map(drop)
    }

    /// Opens an image for reading and writing.
    pub fn open(self: &Arc<Self>, name: &str) -> io::Result<Image> {
        let c = cstr(name)?;
        let mut image: rbd_image_t = std::ptr::null_mut();
        // SAFETY: a valid context, NUL-terminated name, valid out-pointer, no snapshot.
        check(unsafe { rbd_open(self.io, c.as_ptr(), &mut image, std::ptr::null()) })?;
        Ok(Image { handle: image, _pool: Arc::clone(self) })
    }

    /// Opens an image by id (images in the trash have no name to open them by).
    pub fn open_by_id(self: &Arc<Self>, id: &str) -> io::Result<Image> {
        let c = cstr(id)?;
        let mut image: rbd_image_t = std::ptr::null_mut();
        // SAFETY: a valid context, NUL-terminated id, valid out-pointer, no snapshot.
        check(unsafe { rbd_open_by_id(self.io, c.as_ptr(), &mut image, std::ptr::null()) })?;
        Ok(Image { handle: image, _pool: Arc::clone(self) })
    }

    /// Removes an image that has no snapshots.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid context and a NUL-terminated name.
        check(unsafe { rbd_remove(self.io, c.as_ptr()) }).map(drop)
    }

    /// Clones `parent@snap` (a protected snapshot) as `child` in this pool, with the features
    /// given.
    pub fn clone_image(&self, parent: &str, snap: &str, child: &str, features: u64) -> io::Result<()> {
        let (p, s, c) = (cstr(parent)?, cstr(snap)?, cstr(child)?);
        let mut order: c_int = 0;
        // SAFETY: valid contexts (the same pool for parent and child), NUL-terminated strings
        // and an out-pointer for the order (0: the parent's).
        check(unsafe { rbd_clone(self.io, p.as_ptr(), s.as_ptr(), self.io, c.as_ptr(), features, &mut order) })
            .map(drop)
    }

    /// Names of the images in the pool (not those in the trash).
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut size: usize = 4096;
        loop {
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` has `size` writable bytes; librbd writes at most that many and
            // sets `size` to what it needs when that is not enough (-ERANGE).
            let r = unsafe { rbd_list(self.io, buf.as_mut_ptr().cast(), &mut size) };
            if r == -libc::ERANGE {
                continue;
            }
            check(r)?;
            // NUL-separated names, then an empty one.
            return Ok(buf[..size.min(buf.len())]
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect());
        }
    }

    /// The first `max` bytes of RADOS object `oid` in the pool, or `None` if it does not exist.
    pub fn read_object(&self, oid: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
        let c = cstr(oid)?;
        let mut buf = vec![0u8; max];
        // SAFETY: a valid context, NUL-terminated oid, and `buf` with `max` writable bytes;
        // librados returns how many it wrote (at most `max`).
        let r = unsafe { rados_read(self.io, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match check(r) {
            Ok(n) => {
                buf.truncate(usize::try_from(n).unwrap_or(0).min(max));
                Ok(Some(buf))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates RADOS object `oid` holding `data`, atomically; `EEXIST` if it exists.
    pub fn create_object(&self, oid: &str, data: &[u8]) -> io::Result<()> {
        let c = cstr(oid)?;
        // SAFETY: the op is created, filled with pointers that outlive `operate` (`data`, `c`),
        // run once and released on every path.
        unsafe {
            let op = rados_create_write_op();
            if op.is_null() {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            rados_write_op_create(op, CREATE_EXCLUSIVE, std::ptr::null());
            rados_write_op_write_full(op, data.as_ptr().cast(), data.len());
            let r = rados_write_op_operate(op, self.io, c.as_ptr(), std::ptr::null_mut(), 0);
            rados_release_write_op(op);
            check(r).map(drop)
        }
    }

    /// Moves an image to the trash (allowed while clones of its snapshots live).
    pub fn trash_move(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid context and a NUL-terminated name; no deferment.
        check(unsafe { rbd_trash_move(self.io, c.as_ptr(), 0) }).map(drop)
    }

    /// The images in the pool's trash.
    pub fn trash_list(&self) -> io::Result<Vec<TrashEntry>> {
        let mut n: usize = 16;
        loop {
            let mut entries: Vec<TrashImageInfo> = Vec::with_capacity(n);
            let mut count = n;
            // SAFETY: `entries` has room for `count` structs; librbd fills at most that many,
            // or returns -ERANGE and sets `count` to the number needed.
            let r = unsafe { rbd_trash_list(self.io, entries.as_mut_ptr(), &mut count) };
            if r == -libc::ERANGE {
                n = count.max(n * 2);
                continue;
            }
            let filled = check(r)? as usize;
            // SAFETY: librbd initialised the first `filled` entries (<= capacity).
            unsafe { entries.set_len(filled.min(n)) };
            let out = entries
                .iter()
                .map(|e| TrashEntry {
                    // SAFETY: librbd set `id` and `name` to NUL-terminated strings it owns until
                    // the cleanup below.
                    id: unsafe { CStr::from_ptr(e.id) }.to_string_lossy().into_owned(),
                    // SAFETY: as above.
                    name: unsafe { CStr::from_ptr(e.name) }.to_string_lossy().into_owned(),
                })
                .collect();
            // SAFETY: frees the strings of exactly the entries librbd filled, once.
            unsafe { rbd_trash_list_cleanup(entries.as_mut_ptr(), entries.len()) };
            return Ok(out);
        }
    }

    /// Deletes an image from the trash; it must have no snapshots left.
    pub fn trash_remove(&self, id: &str) -> io::Result<()> {
        let c = cstr(id)?;
        // SAFETY: a valid context and a NUL-terminated id; `force` only skips the deferment.
        check(unsafe { rbd_trash_remove(self.io, c.as_ptr(), true) }).map(drop)
    }
}

/// An open RBD image.
#[derive(Debug)]
pub struct Image {
    handle: rbd_image_t,
    _pool: Arc<Pool>,
}

// SAFETY: librbd's image context takes its own locks; synchronous and asynchronous calls on one
// open image may come from several threads.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by `rbd_open*` and is closed once; every `Write` that
        // borrows it has completed (they borrow `&Image`).
        unsafe { rbd_close(self.handle) };
    }
}

/// Sums the lengths of the extents that exist (the `rbd_diff_iterate2` callback).
unsafe extern "C" fn add_existing(_offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    if exists != 0 {
        // SAFETY: `arg` is the `&mut u64` passed by `Image::used_bytes`, alive for the call.
        unsafe { *arg.cast::<u64>() += len as u64 };
    }
    0
}

impl Image {
    pub fn size(&self) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: an open image and a valid out-pointer.
        check(unsafe { rbd_get_size(self.handle, &mut size) })?;
        Ok(size)
    }

    pub fn resize(&self, size: u64) -> io::Result<()> {
        // SAFETY: an open image.
        check(unsafe { rbd_resize(self.handle, size) }).map(drop)
    }

    pub fn features(&self) -> io::Result<u64> {
        let mut features = 0u64;
        // SAFETY: an open image and a valid out-pointer.
        check(unsafe { rbd_get_features(self.handle, &mut features) })?;
        Ok(features)
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let want = (buf.len() - done).min(64 << 20);
            // SAFETY: `buf[done..done + want]` is writable and stays borrowed for the call.
            let n = unsafe { rbd_read(self.handle, offset + done as u64, want, buf[done..].as_mut_ptr().cast()) };
            if n < 0 {
                return Err(io::Error::from_raw_os_error(-(n as i32)));
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the image"));
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Discards a range: it reads back as zeros and its objects are freed where whole.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: an open image.
        check(unsafe { rbd_discard(self.handle, offset, len) }).map(drop)
    }

    pub fn flush(&self) -> io::Result<()> {
        // SAFETY: an open image.
        check(unsafe { rbd_flush(self.handle) }).map(drop)
    }

    pub fn flatten(&self) -> io::Result<()> {
        // SAFETY: an open image; blocks until every object is copied up from the parent.
        check(unsafe { rbd_flatten(self.handle) }).map(drop)
    }

    pub fn snap_exists(&self, snap: &str) -> io::Result<bool> {
        let c = cstr(snap)?;
        let mut exists = false;
        // SAFETY: an open image, a NUL-terminated name and a valid out-pointer.
        check(unsafe { rbd_snap_exists(self.handle, c.as_ptr(), &mut exists) })?;
        Ok(exists)
    }

    pub fn snap_create(&self, snap: &str) -> io::Result<()> {
        let c = cstr(snap)?;
        // SAFETY: an open image and a NUL-terminated name.
        check(unsafe { rbd_snap_create(self.handle, c.as_ptr()) }).map(drop)
    }

    pub fn snap_is_protected(&self, snap: &str) -> io::Result<bool> {
        let c = cstr(snap)?;
        let mut protected: c_int = 0;
        // SAFETY: an open image, a NUL-terminated name and a valid out-pointer.
        check(unsafe { rbd_snap_is_protected(self.handle, c.as_ptr(), &mut protected) })?;
        Ok(protected != 0)
    }

    pub fn snap_protect(&self, snap: &str) -> io::Result<()> {
        let c = cstr(snap)?;
        // SAFETY: an open image and a NUL-terminated name.
        check(unsafe { rbd_snap_protect(self.handle, c.as_ptr()) }).map(drop)
    }

    /// Fails with `EBUSY` while clones of the snapshot exist.
    pub fn snap_unprotect(&self, snap: &str) -> io::Result<()> {
        let c = cstr(snap)?;
        // SAFETY: an open image and a NUL-terminated name.
        check(unsafe { rbd_snap_unprotect(self.handle, c.as_ptr()) }).map(drop)
    }

    pub fn snap_remove(&self, snap: &str) -> io::Result<()> {
        let c = cstr(snap)?;
        // SAFETY: an open image and a NUL-terminated name.
        check(unsafe { rbd_snap_remove(self.handle, c.as_ptr()) }).map(drop)
    }

    /// The snapshot this image was cloned from, if it is a clone.
    pub fn parent(&self) -> io::Result<Option<Parent>> {
        let (mut pool, mut image, mut snap) = ([0u8; 256], [0u8; 256], [0u8; 256]);
        // SAFETY: three writable buffers of the lengths given; librbd writes NUL-terminated
        // names or returns -ERANGE / -ENOENT (no parent).
        let r = unsafe {
            rbd_get_parent_info(
                self.handle,
                pool.as_mut_ptr().cast(),
                pool.len(),
                image.as_mut_ptr().cast(),
                image.len(),
                snap.as_mut_ptr().cast(),
                snap.len(),
            )
        };
        if r == -libc::ENOENT {
            return Ok(None);
        }
        check(r)?;
        let text = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        Ok(Some(Parent { pool: text(&pool), image: text(&image), snap: text(&snap) }))
    }

    /// Bytes this image itself stores (not its parent's), from diff iteration over its head.
    pub fn used_bytes(&self) -> io::Result<u64> {
        let size = self.size()?;
        let mut used: u64 = 0;
        // SAFETY: an open image; the callback only adds to `used`, which outlives the call
        // (diff iteration is synchronous).
        check(unsafe {
            rbd_diff_iterate2(
                self.handle,
                std::ptr::null(),
                0,
                size,
                0,
                0,
                add_existing,
                (&mut used as *mut u64).cast(),
            )
        })?;
        Ok(used)
    }

    /// Writes `buf` at `offset` asynchronously. The caller keeps the returned write (and with
    /// it the buffer) and the image alive until it has been waited for: see [`Device`].
    fn aio_write(&self, buf: Vec<u8>, offset: u64) -> io::Result<AioWrite> {
        let mut completion: rbd_completion_t = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; no callback.
        check(unsafe { rbd_aio_create_completion(std::ptr::null_mut(), None, &mut completion) })?;
        // SAFETY: `buf` is moved into the returned `AioWrite`, which keeps it alive (its heap
        // storage does not move) until the completion has fired; `Device` waits for every
        // write before the image is closed.
        let r = unsafe { rbd_aio_write(self.handle, offset, buf.len(), buf.as_ptr().cast(), completion) };
        if r < 0 {
            // SAFETY: the write was not queued, so the completion is ours to release.
            unsafe { rbd_aio_release(completion) };
            return Err(io::Error::from_raw_os_error(-r));
        }
        Ok(AioWrite { completion, buf: Some(buf) })
    }
}

/// A queued asynchronous write. Dropping it waits for it.
#[derive(Debug)]
struct AioWrite {
    completion: rbd_completion_t,
    buf: Option<Vec<u8>>,
}

// SAFETY: a completion may be waited for from any thread.
unsafe impl Send for AioWrite {}

impl AioWrite {
    /// Waits for the write; returns its buffer for reuse.
    fn wait(mut self) -> io::Result<Vec<u8>> {
        let r = self.finish();
        let buf = self.buf.take().unwrap_or_default();
        r.map(|()| buf)
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.completion.is_null() {
            return Ok(());
        }
        // SAFETY: a queued completion, waited for and released exactly once (then nulled).
        let r = unsafe {
            rbd_aio_wait_for_complete(self.completion);
            let r = rbd_aio_get_return_value(self.completion);
            rbd_aio_release(self.completion);
            r
        };
        self.completion = std::ptr::null_mut();
        if r < 0 {
            Err(io::Error::from_raw_os_error(-(r as i32)))
        } else {
            Ok(())
        }
    }
}

impl Drop for AioWrite {
    fn drop(&mut self) {
        // The buffer must outlive the write: wait before it is freed.
        let _ = self.finish();
    }
}

/// An open image with up to `depth` asynchronous writes in flight (buffers reused). Every other
/// operation waits for the queued writes first, so reads see them; dropping it waits too.
#[derive(Debug)]
pub struct Device {
    // Declared before `image`, and drained in `Drop`: writes finish before the image closes.
    inflight: Mutex<(VecDeque<AioWrite>, Vec<Vec<u8>>)>,
    image: Image,
    depth: usize,
}

impl Device {
    pub fn new(image: Image, depth: usize) -> Self {
        Device { inflight: Mutex::new((VecDeque::new(), Vec::new())), image, depth: depth.max(1) }
    }

    /// The image, after every queued write has completed.
    pub fn image(&self) -> io::Result<&Image> {
        self.drain()?;
        Ok(&self.image)
    }

    /// Queues a copy of `data` at `offset`; waits for the oldest write first when `depth` are
    /// in flight. An earlier write's failure is returned here.
    pub fn write(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut guard = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let (queue, spare) = &mut *guard;
        while queue.len() >= self.depth {
            if let Some(oldest) = queue.pop_front() {
                spare.push(oldest.wait()?);
            }
        }
        let mut buf = spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        queue.push_back(self.image.aio_write(buf, offset)?);
        Ok(())
    }

    /// Waits for every queued write; returns the first failure.
    pub fn drain(&self) -> io::Result<()> {
        let mut guard = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let (queue, spare) = &mut *guard;
        let mut first = Ok(());
        while let Some(write) = queue.pop_front() {
            match write.wait() {
                Ok(buf) => spare.push(buf),
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.drain();
    }
}
