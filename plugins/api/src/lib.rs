//! The boundary between a DistKV node and a storage-backend plugin.
//!
//! A plugin is a shared library (a Rust `cdylib`, or any language that can export C
//! functions) that implements an ordered byte-key store. The node loads it at start-up and
//! uses it as its `StorageEngine`. This crate defines both sides of that boundary:
//!
//! * the **C ABI**: two exported symbols, a `#[repr(C)]` table of `extern "C"` functions
//!   ([`PluginVTable`]) and the byte formats of the buffers they exchange ([`codec`]).
//!   No Rust type crosses the boundary: only integers, pointers to bytes, and the
//!   `#[repr(C)]` structs of this module;
//! * for plugin authors, a safe trait, [`Backend`], and the macro [`export_plugin!`] that
//!   exports a `Backend` through the ABI. A plugin written this way contains no `unsafe`.
//!
//! # Writing a plugin
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::ops::Bound;
//! use std::sync::RwLock;
//! use distkv_plugin_api::{Backend, BackendError, Op, Options};
//!
//! /// An in-memory store (a complete, if simple, plugin).
//! pub struct Tiny(RwLock<BTreeMap<Vec<u8>, Vec<u8>>>);
//!
//! impl Backend for Tiny {
//!     const NAME: &'static str = "tiny";
//!     fn open(_options: &Options) -> Result<Self, BackendError> {
//!         Ok(Tiny(RwLock::new(BTreeMap::new())))
//!     }
//!     fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
//!         Ok(self.0.read().unwrap().get(key).cloned())
//!     }
//!     fn write(&self, ops: Vec<Op>) -> Result<(), BackendError> {
//!         let mut map = self.0.write().unwrap();
//!         for op in ops {
//!             match op {
//!                 Op::Put { key, value } => { map.insert(key, value); }
//!                 Op::Delete { key } => { map.remove(&key); }
//!             }
//!         }
//!         Ok(())
//!     }
//!     fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize)
//!         -> Result<Vec<(Vec<u8>, Vec<u8>)>, BackendError> {
//!         let map = self.0.read().unwrap();
//!         Ok(map.range::<[u8], _>((start, end)).take(limit)
//!             .map(|(k, v)| (k.clone(), v.clone())).collect())
//!     }
//! }
//!
//! distkv_plugin_api::export_plugin!(Tiny);
//! ```
//!
//! Build it with `crate-type = ["cdylib"]` and point the node's `storage.plugin.path` at
//! the resulting `lib<name>.so` (`.dylib` on macOS, `.dll` on Windows). A plugin must be
//! built with `panic = "unwind"` (the default) so that a panic can be caught at the
//! boundary and reported as an error.
//!
//! # The ABI (version 1)
//!
//! A plugin exports two C symbols:
//!
//! * `uint32_t distkv_plugin_abi_version(void)` ([`ABI_VERSION_SYMBOL`]): the ABI version
//!   the plugin was built for. The host checks it first and refuses any other version;
//! * `const PluginVTable *distkv_plugin_entry(void)` ([`ENTRY_SYMBOL`]): a pointer to a
//!   table that lives as long as the library stays loaded.
//!
//! Every table function returns a [`Status`]. Results and error messages come back in
//! [`PluginBuffer`]s that the plugin allocated; the host copies them and hands each one
//! back to the plugin's `free_buffer`. Input buffers belong to the host and are only
//! borrowed for the duration of the call. An error message is UTF-8 text.
//!
//! Table functions other than `open`, `destroy` and `free_buffer` may be called at the
//! same time from several threads on the same handle; a plugin must be thread-safe
//! ([`Backend`] requires `Send + Sync`). `destroy` is called once, when no other call on
//! that handle is running or will run.
//!
//! # What the ABI guarantees across versions
//!
//! * [`ABI_VERSION`] changes whenever anything a plugin and host share changes
//!   incompatibly: a symbol, the layout or meaning of [`PluginVTable`] or of a struct it
//!   uses, a status code, or a [`codec`] format. The host loads only plugins built for
//!   exactly its version and says which version it found and expected otherwise; it
//!   never calls into a plugin of another version.
//! * Within one ABI version, changes are only additive: new fields go at the end of
//!   [`PluginVTable`], and [`PluginVTable::size`] tells the host how much of the table
//!   the plugin provides, so a newer host can load an older plugin of the same version.
//! * The two exported symbols, their signatures, and the meaning of
//!   `distkv_plugin_abi_version` never change, so any host can tell any plugin's version.
//! * Nothing about Rust types, the Rust compiler version, or the allocator is shared:
//!   a plugin may be built with a different compiler than the node.

#![deny(missing_docs)]

mod backend;
pub mod codec;
mod export;

use std::ffi::c_void;

pub use backend::{Backend, BackendError, Entry, Op, Options};

/// The ABI version this crate implements. See the [crate docs](crate) for what changes it.
pub const ABI_VERSION: u32 = 1;

/// Name of the exported `uint32_t distkv_plugin_abi_version(void)` function.
pub const ABI_VERSION_SYMBOL: &str = "distkv_plugin_abi_version";

/// Name of the exported `const PluginVTable *distkv_plugin_entry(void)` function.
pub const ENTRY_SYMBOL: &str = "distkv_plugin_entry";

/// What a table function reports. Outputs are only written when the status says so.
pub type Status = i32;
/// Success; outputs (if any) are written.
pub const STATUS_OK: Status = 0;
/// `get` only: the key is absent; nothing is written.
pub const STATUS_NOT_FOUND: Status = 1;
/// The operation failed; the error buffer holds a UTF-8 message.
pub const STATUS_ERROR: Status = 2;
/// The backend was closed; no message.
pub const STATUS_CLOSED: Status = 3;
/// The plugin panicked; the panic was caught and the error buffer holds its message.
pub const STATUS_PANIC: Status = 4;

/// An opaque pointer to one opened backend, created by `open` and freed by `destroy`.
pub type Handle = *mut c_void;

/// Bytes allocated by the plugin and handed to the host, which must return them to the
/// plugin's `free_buffer` exactly once. `ptr` is null only when `len` and `capacity` are 0.
#[repr(C)]
#[derive(Debug)]
pub struct PluginBuffer {
    /// Start of the bytes.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocation size, for the plugin's own bookkeeping; the host must not use it.
    pub capacity: usize,
}

impl PluginBuffer {
    /// A buffer holding nothing (what the host passes as an output slot).
    pub const EMPTY: PluginBuffer = PluginBuffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        capacity: 0,
    };
}

/// How a bound of a scan range is given: [`BOUND_UNBOUNDED`], [`BOUND_INCLUDED`] or
/// [`BOUND_EXCLUDED`], with the key bytes (ignored when unbounded).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KeyBound {
    /// One of the `BOUND_*` constants.
    pub kind: u32,
    /// The key (borrowed from the host for the duration of the call).
    pub ptr: *const u8,
    /// The key's length.
    pub len: usize,
}

/// No bound on this side.
pub const BOUND_UNBOUNDED: u32 = 0;
/// The key itself is in the range.
pub const BOUND_INCLUDED: u32 = 1;
/// The key itself is not in the range.
pub const BOUND_EXCLUDED: u32 = 2;

/// `open(options, options_len, handle_out, error_out)`: opens a backend with the options
/// (a UTF-8 JSON object, see [`Options`]); on success writes the new handle.
pub type OpenFn = unsafe extern "C" fn(*const u8, usize, *mut Handle, *mut PluginBuffer) -> Status;
/// `get(handle, key, key_len, value_out, error_out)`: `STATUS_OK` with the value,
/// or `STATUS_NOT_FOUND`.
pub type GetFn =
    unsafe extern "C" fn(Handle, *const u8, usize, *mut PluginBuffer, *mut PluginBuffer) -> Status;
/// `write(handle, batch, batch_len, error_out)`: applies a batch encoded with
/// [`codec::encode_batch`] atomically.
pub type WriteFn = unsafe extern "C" fn(Handle, *const u8, usize, *mut PluginBuffer) -> Status;
/// `scan(handle, start, end, limit, page_out, error_out)`: up to `limit` entries of the
/// range in ascending key order, encoded with [`codec::encode_page`].
pub type ScanFn = unsafe extern "C" fn(
    Handle,
    KeyBound,
    KeyBound,
    u64,
    *mut PluginBuffer,
    *mut PluginBuffer,
) -> Status;
/// `flush(handle, error_out)`, and also the shape of `close(handle, error_out)`.
pub type HandleFn = unsafe extern "C" fn(Handle, *mut PluginBuffer) -> Status;
/// `stats(handle, stats_out, error_out)`: name/value pairs encoded with
/// [`codec::encode_stats`].
pub type StatsFn = unsafe extern "C" fn(Handle, *mut PluginBuffer, *mut PluginBuffer) -> Status;
/// `destroy(handle)`: frees the handle. Called once, last.
pub type DestroyFn = unsafe extern "C" fn(Handle);
/// `free_buffer(buffer)`: frees a buffer the plugin returned.
pub type FreeBufferFn = unsafe extern "C" fn(PluginBuffer);

/// The table of functions a plugin exports through `distkv_plugin_entry`. Every entry is
/// required; the host refuses a table with a null entry.
#[repr(C)]
#[derive(Debug)]
pub struct PluginVTable {
    /// Must equal [`ABI_VERSION`] (the same value `distkv_plugin_abi_version` returns).
    pub abi_version: u32,
    /// `size_of::<PluginVTable>()` in the plugin: how much of the table it provides.
    pub size: usize,
    /// The plugin's name, UTF-8, not NUL-terminated (shown in stats and errors).
    pub name_ptr: *const u8,
    /// Length of the name in bytes.
    pub name_len: usize,
    /// See [`OpenFn`].
    pub open: Option<OpenFn>,
    /// See [`GetFn`].
    pub get: Option<GetFn>,
    /// See [`WriteFn`].
    pub write: Option<WriteFn>,
    /// See [`ScanFn`].
    pub scan: Option<ScanFn>,
    /// Makes every write that returned so far durable. See [`HandleFn`].
    pub flush: Option<HandleFn>,
    /// See [`StatsFn`].
    pub stats: Option<StatsFn>,
    /// Flushes and closes the backend; later calls return `STATUS_CLOSED`. See [`HandleFn`].
    pub close: Option<HandleFn>,
    /// See [`DestroyFn`].
    pub destroy: Option<DestroyFn>,
    /// See [`FreeBufferFn`].
    pub free_buffer: Option<FreeBufferFn>,
}

// SAFETY: a `PluginVTable` is immutable once built; its pointers lead to functions and to
// the plugin's name, which is static data that lives as long as the library. Sharing it
// between threads (as a `static` in the plugin and a reference in the host) is sound.
unsafe impl Sync for PluginVTable {}
// SAFETY: as above; nothing in the table is tied to the thread that created it.
unsafe impl Send for PluginVTable {}

impl PluginVTable {
    /// The table exporting backend `B`; [`export_plugin!`] puts it in a `static`.
    pub const fn for_backend<B: Backend>() -> PluginVTable {
        PluginVTable {
            abi_version: ABI_VERSION,
            size: std::mem::size_of::<PluginVTable>(),
            name_ptr: B::NAME.as_ptr(),
            name_len: B::NAME.len(),
            open: Some(export::shims::open::<B>),
            get: Some(export::shims::get::<B>),
            write: Some(export::shims::write::<B>),
            scan: Some(export::shims::scan::<B>),
            flush: Some(export::shims::flush::<B>),
            stats: Some(export::shims::stats::<B>),
            close: Some(export::shims::close::<B>),
            destroy: Some(export::shims::destroy::<B>),
            free_buffer: Some(export::shims::free_buffer),
        }
    }
}

/// The plugin example in the top-level README.md, compiled as a doc test so that it
/// cannot drift from this API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExample;
