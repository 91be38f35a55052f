//! The deny-all WASI a plugin gets: components built by componentize-py, componentize-js or a
//! `wasm32-wasip2` toolchain import WASI 0.2 interfaces, and volcache links every one of them to
//! an implementation that gives nothing away.
//!
//! What a plugin sees:
//! - filesystem: no preopened directories, so every path is unreachable (there is no root);
//! - environment, arguments, initial directory: empty;
//! - stdin: empty (end of file at once);
//! - stdout, stderr: captured and written to the daemon's log as the plugin's own log lines
//!   (the same per-call budget and 1 KiB truncation as `host.log`);
//! - sockets: TCP, UDP and name lookups all refused;
//! - clocks: frozen at the Unix epoch, and every sleep or timer is ready at once, so a host call
//!   can never block past the call deadline (time reaches a policy as `view.now-ms`);
//! - random: a fixed, repeating byte sequence (decisions are reproducible, and the simulator
//!   replays them exactly);
//! - `exit`: traps, like any other trap (counted; the built-in decides that request);
//! - HTTP (`wasi:http`, which componentize-js imports by default for `fetch`): every function
//!   traps when called.
//!
//! The memory cap and the epoch deadline apply to WASI code exactly as to the policy's own.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// WASI 0.2 packages a plugin may import: each linked to the deny-all implementation, except
/// `http`, whose functions all trap.
pub(crate) const WASI_PACKAGES: [&str; 7] = ["cli", "io", "clocks", "random", "filesystem", "sockets", "http"];

/// Most bytes of stdout + stderr kept from one call; the rest is counted as dropped.
const OUTPUT_PER_CALL: usize = 8 * 1024;

/// Whether an import name (e.g. `wasi:io/streams@0.2.3`) is a WASI 0.2 interface the sandbox
/// links.
pub(crate) fn is_linked_wasi(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("wasi:") else { return false };
    let Some((package, rest)) = rest.split_once('/') else { return false };
    let Some((_, version)) = rest.split_once('@') else { return false };
    WASI_PACKAGES.contains(&package) && version.starts_with("0.2.")
}

/// One instance's WASI state.
pub(crate) struct Sandbox {
    ctx: WasiCtx,
    table: ResourceTable,
    output: Output,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

impl Sandbox {
    pub(crate) fn new() -> Self {
        let output = Output::default();
        let mut builder = WasiCtx::builder();
        builder
            .stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(Frozen)
            .monotonic_clock(Frozen)
            .secure_random(Deterministic::new(FIXED_BYTES.to_vec()))
            .insecure_random(Deterministic::new(FIXED_BYTES.to_vec()))
            .insecure_random_seed(0);
        Sandbox { ctx: builder.build(), table: ResourceTable::new(), output }
    }

    pub(crate) fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }

    /// The complete lines (and any unterminated tail) written since the last call, and how many
    /// bytes were dropped over the per-call limit.
    pub(crate) fn take_output(&self) -> (Vec<String>, usize) {
        let mut buf = self.output.0.lock().unwrap_or_else(|p| p.into_inner());
        if buf.bytes.is_empty() && buf.dropped == 0 {
            // The usual case, on every call: nothing printed, nothing to allocate.
            return (Vec::new(), 0);
        }
        let bytes = std::mem::take(&mut buf.bytes);
        let dropped = std::mem::take(&mut buf.dropped);
        let text = String::from_utf8_lossy(&bytes);
        let lines = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
        (lines, dropped)
    }
}

/// Links every WASI 0.2 interface into `linker` (synchronous bindings), then replaces the
/// monotonic clock's timers with ones that are ready at once: a sleep is a host call, and a host
/// call is not interrupted by the epoch deadline.
pub(crate) fn add_to_linker<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    sandbox: fn(&mut T) -> &mut ResourceTable,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        move |mut store: StoreContextMut<'_, T>, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            ready(sandbox(store.data_mut()))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        move |mut store: StoreContextMut<'_, T>, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            ready(sandbox(store.data_mut()))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Links each `wasi:http` interface the component imports to functions that trap when called.
/// Its own resource types get one host type that no function ever makes; the stream, pollable
/// and error types it borrows from `wasi:io` are the ones `add_to_linker` linked.
pub(crate) fn trap_http<T: 'static>(
    linker: &mut Linker<T>,
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    use wasmtime::component::ResourceType;
    const FROM_IO: [&str; 4] = ["input-stream", "output-stream", "pollable", "error"];
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        if !name.starts_with("wasi:http/") {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else { continue };
        let mut linked = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{export}");
                    linked.func_new(export, move |_, _, _, _| {
                        Err(wasmtime::format_err!("{what}: plugins have no network (HTTP is refused)"))
                    })?;
                }
                ComponentItem::Resource(_) if !FROM_IO.contains(&export) => {
                    linked.resource(export, ResourceType::host::<HttpDenied>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The type of every `wasi:http` resource; none is ever created.
struct HttpDenied;

/// The interface name wasmtime-wasi defines the monotonic clock under; imports of any 0.2.x
/// version resolve to it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

fn ready(table: &mut ResourceTable) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let timer = table.push(Ready)?;
    Ok((wasmtime_wasi::p2::subscribe(table, timer)?,))
}

/// A timer that has always already fired.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// The plugin's random bytes: not secret, not random, always the same.
const FIXED_BYTES: [u8; 8] = [0x5a, 0x17, 0xc3, 0x88, 0x2e, 0xf1, 0x64, 0x9d];

/// Both clocks, stopped at zero.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

/// stdout and stderr of one instance: a bounded buffer drained after every call.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Captured>>);

impl wasmtime_wasi::cli::IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for Output {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = OUTPUT_PER_CALL.saturating_sub(buf.bytes.len());
        let kept = data.len().min(room);
        buf.bytes.extend_from_slice(&data[..kept]);
        buf.dropped += data.len() - kept;
        // Everything counts as written: a plugin that prints too much loses lines, not its call.
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWrite;

    #[test]
    fn only_wasi_0_2_of_the_listed_packages_is_linked() {
        assert!(is_linked_wasi("wasi:io/streams@0.2.0"));
        assert!(is_linked_wasi("wasi:sockets/tcp@0.2.3"));
        assert!(is_linked_wasi("wasi:cli/environment@0.2.12"));
        assert!(is_linked_wasi("wasi:http/outgoing-handler@0.2.10"));
        assert!(!is_linked_wasi("wasi:keyvalue/store@0.2.0"));
        assert!(!is_linked_wasi("wasi:io/streams@0.3.0"));
        assert!(!is_linked_wasi("wasi:io/streams"));
        assert!(!is_linked_wasi("volcache:policy/host@0.1.0"));
    }

    #[test]
    fn output_over_the_per_call_limit_is_counted_not_kept() {
        let sandbox = Sandbox::new();
        let mut out = sandbox.output.clone();
        let line = vec![b'x'; 1000];
        for _ in 0..10 {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut data = line.clone();
            data.push(b'\n');
            let n = Pin::new(&mut out).poll_write(&mut cx, &data);
            assert!(matches!(n, Poll::Ready(Ok(1001))));
        }
        let (lines, dropped) = sandbox.take_output();
        assert_eq!(dropped, 10 * 1001 - OUTPUT_PER_CALL);
        assert_eq!(lines.len(), 9, "8 whole lines and the cut ninth");
        assert!(sandbox.take_output().0.is_empty(), "drained");
    }
}
