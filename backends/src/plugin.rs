//! The plugin host: loads a storage-backend plugin (a shared library speaking the
//! [`distkv_plugin_api`] C ABI) and wraps it as a [`StorageEngine`].
//!
//! [`PluginEngine::load`] checks, in order: that the file exists; that it is a shared
//! library; that it exports the plugin symbols; that it was built for this host's
//! [`ABI_VERSION`]; that its function table is complete; that the options are a JSON
//! object; and that the plugin's own `open` succeeds. Each failure is one [`PluginError`]
//! whose message is one line naming the file and the problem. Nothing in loading crashes
//! the process.
//!
//! # Options
//!
//! The options are a JSON object, passed to the plugin's `open` verbatim: the host adds
//! nothing. (The node, not the host, adds `"data_dir"` to them; see
//! [`distkv_plugin_api::Options`].)
//!
//! # Lifetime of a loaded library
//!
//! A library, once a plugin in it has been opened, stays mapped until the process exits:
//! Rust libraries may register thread-local destructors that point into their code, and
//! unloading them would make those dangling. Loading the same path again reuses it.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use distkv_engine::{
    EngineStats, Error, KeyRange, Result, StatValue, StorageEngine, WriteBatch, WriteOp,
};
use distkv_plugin_api::codec::{self, BatchEncoder};
use distkv_plugin_api::{
    Handle, KeyBound, PluginBuffer, PluginVTable, Status, ABI_VERSION, ABI_VERSION_SYMBOL,
    BOUND_EXCLUDED, BOUND_INCLUDED, BOUND_UNBOUNDED, ENTRY_SYMBOL, STATUS_CLOSED, STATUS_ERROR,
    STATUS_NOT_FOUND, STATUS_OK, STATUS_PANIC,
};
use libloading::Library;

/// Why a plugin could not be loaded. `Display` is one line that names the file, says what
/// is wrong, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// No file at the configured path.
    #[error("storage plugin {path}: file not found ({reason}); check storage.plugin.path")]
    NotFound {
        /// The configured path.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// The file exists but the dynamic loader refused it.
    #[error("storage plugin {path}: not a loadable shared library: {reason}; build the plugin as a cdylib for this platform")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// The library exports none of the plugin symbols.
    #[error("storage plugin {path}: not a DistKV storage plugin (it exports neither {ABI_VERSION_SYMBOL} nor {ENTRY_SYMBOL}); build it with distkv_plugin_api::export_plugin!")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
    },
    /// The library exports one plugin symbol but not the other.
    #[error("storage plugin {path}: missing symbol {symbol}; build it with distkv_plugin_api::export_plugin!")]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol that is missing.
        symbol: &'static str,
    },
    /// The plugin was built for another ABI version.
    #[error("storage plugin {path}: built for plugin ABI version {found}, but this node speaks version {expected}; rebuild the plugin against a distkv-plugin-api with ABI version {expected}")]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// The version the plugin reports.
        found: u32,
        /// [`ABI_VERSION`].
        expected: u32,
    },
    /// The plugin's function table is unusable (null, too short, a null entry, a bad name).
    #[error("storage plugin {path}: invalid function table: {problem}; rebuild it with distkv_plugin_api::export_plugin!")]
    InvalidTable {
        /// The file.
        path: PathBuf,
        /// What is wrong with the table.
        problem: String,
    },
    /// The options given to the host are not a JSON object.
    #[error("storage plugin {path}: options are not a JSON object ({reason}); set storage.plugin.options to a table")]
    InvalidOptions {
        /// The file.
        path: PathBuf,
        /// Why the options were refused.
        reason: String,
    },
    /// The plugin's `open` reported an error (or panicked).
    #[error("storage plugin {path} ({name}) failed to open: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The plugin's message.
        message: String,
    },
}

/// The options JSON a node passes to [`PluginEngine::load`]: the operator's
/// `storage.plugin.options` object with `"data_dir"` set to the node's storage directory
/// (as a string; a non-UTF-8 path is converted lossily), unless the operator already set
/// `data_dir`. The host itself adds nothing to the options it is given.
pub fn options_with_data_dir(
    options: &serde_json::Map<String, serde_json::Value>,
    data_dir: &Path,
) -> String {
    let mut options = options.clone();
    options
        .entry("data_dir")
        .or_insert_with(|| serde_json::Value::String(data_dir.to_string_lossy().into_owned()));
    serde_json::Value::Object(options).to_string()
}

/// The checked, non-null entries of a plugin's function table.
#[derive(Clone, Copy)]
struct Functions {
    get: distkv_plugin_api::GetFn,
    write: distkv_plugin_api::WriteFn,
    scan: distkv_plugin_api::ScanFn,
    flush: distkv_plugin_api::HandleFn,
    stats: distkv_plugin_api::StatsFn,
    close: distkv_plugin_api::HandleFn,
    destroy: distkv_plugin_api::DestroyFn,
    free_buffer: distkv_plugin_api::FreeBufferFn,
}

/// A storage engine provided by a plugin. Every call goes through the plugin's C function
/// table; a panic in the plugin comes back as [`Error::Other`] naming the plugin and the
/// operation.
pub struct PluginEngine {
    functions: Functions,
    handle: Handle,
    name: String,
    path: PathBuf,
    closed: AtomicBool,
}

// SAFETY: the handle is only passed to the plugin's table functions, which the ABI
// requires to be callable from any thread and concurrently (the export layer enforces
// `Send + Sync` on the backend); `destroy` runs in `Drop`, when no other call can run.
unsafe impl Send for PluginEngine {}
// SAFETY: as above; `&self` methods only make concurrent table calls, which the ABI allows.
unsafe impl Sync for PluginEngine {}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

/// Makes a message from the loader or a plugin fit on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl PluginEngine {
    /// Loads the plugin library at `path` and opens its backend with `options_json`, a
    /// JSON object passed verbatim to the plugin. See the [module docs](self) for the
    /// checks made; each failure is a one-line [`PluginError`].
    pub fn load(path: &Path, options_json: &str) -> std::result::Result<PluginEngine, PluginError> {
        let given = path.to_path_buf();
        // An absolute path makes the loader open exactly this file, never search for it.
        let file = std::fs::canonicalize(path).map_err(|e| PluginError::NotFound {
            path: given.clone(),
            reason: one_line(&e.to_string()),
        })?;
        if !file.is_file() {
            return Err(PluginError::NotALibrary {
                path: given,
                reason: "it is not a regular file".into(),
            });
        }
        // SAFETY: loading a library runs its initialisers. The operator chose this file as
        // the node's storage plugin; a DistKV plugin has no initialisers of its own.
        let library = unsafe { Library::new(&file) }.map_err(|e| PluginError::NotALibrary {
            path: given.clone(),
            reason: one_line(&e.to_string()),
        })?;

        // SAFETY: the symbol types are those the ABI defines for these two names.
        let version_fn =
            unsafe { library.get::<unsafe extern "C" fn() -> u32>(ABI_VERSION_SYMBOL.as_bytes()) };
        // SAFETY: as above.
        let entry_fn = unsafe {
            library.get::<unsafe extern "C" fn() -> *const PluginVTable>(ENTRY_SYMBOL.as_bytes())
        };
        let (version_fn, entry_fn) = match (version_fn, entry_fn) {
            (Ok(v), Ok(e)) => (*v, *e),
            (Err(_), Err(_)) => return Err(PluginError::NotAPlugin { path: given }),
            (Err(_), Ok(_)) => {
                return Err(PluginError::MissingSymbol {
                    path: given,
                    symbol: ABI_VERSION_SYMBOL,
                })
            }
            (Ok(_), Err(_)) => {
                return Err(PluginError::MissingSymbol {
                    path: given,
                    symbol: ENTRY_SYMBOL,
                })
            }
        };
        // SAFETY: `distkv_plugin_abi_version` takes nothing and returns a u32 in every ABI
        // version; the library is loaded.
        let found = unsafe { version_fn() };
        if found != ABI_VERSION {
            return Err(PluginError::AbiMismatch {
                path: given,
                found,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: the plugin declared our ABI version, whose entry has this signature.
        let table = unsafe { entry_fn() };
        let invalid = |problem: String| PluginError::InvalidTable {
            path: given.clone(),
            problem,
        };
        if table.is_null() {
            return Err(invalid(format!("{ENTRY_SYMBOL} returned a null table")));
        }
        // SAFETY: non-null, and every ABI version starts the table with `abi_version: u32`
        // and `size: usize`, so reading these two fields is valid even for a table shorter
        // than ours; the rest is read only once `size` says it is there.
        let (table_version, size) = unsafe {
            (
                std::ptr::addr_of!((*table).abi_version).read(),
                std::ptr::addr_of!((*table).size).read(),
            )
        };
        if table_version != ABI_VERSION {
            return Err(PluginError::AbiMismatch {
                path: given,
                found: table_version,
                expected: ABI_VERSION,
            });
        }
        if size < std::mem::size_of::<PluginVTable>() {
            return Err(invalid(format!(
                "the table is {size} bytes, ABI version {ABI_VERSION} needs {}",
                std::mem::size_of::<PluginVTable>()
            )));
        }
        // The library stays loaded for the life of the process (see the module docs), which
        // makes the table and every function pointer in it valid for `'static`.
        std::mem::forget(library);
        // SAFETY: non-null, at least `size_of::<PluginVTable>()` bytes as checked above, and
        // static data of a library that is never unloaded.
        let table: &'static PluginVTable = unsafe { &*table };
        let (functions, open) =
            check_entries(table).map_err(|entry| invalid(format!("entry {entry} is null")))?;
        let name = if table.name_ptr.is_null() || table.name_len == 0 {
            return Err(invalid("the plugin name is empty".into()));
        } else {
            // SAFETY: the ABI says `name_ptr` points to `name_len` bytes of static data.
            let bytes = unsafe { std::slice::from_raw_parts(table.name_ptr, table.name_len) };
            std::str::from_utf8(bytes)
                .map_err(|_| invalid("the plugin name is not UTF-8".into()))?
                .to_string()
        };

        if let Err(e) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(options_json)
        {
            return Err(PluginError::InvalidOptions {
                path: given,
                reason: one_line(&e.to_string()),
            });
        }
        let mut handle: Handle = std::ptr::null_mut::<c_void>();
        let mut error = PluginBuffer::EMPTY;
        // SAFETY: `open` has the ABI's signature; the options bytes and both output slots
        // are valid for the duration of the call.
        let status = unsafe {
            open(
                options_json.as_ptr(),
                options_json.len(),
                &mut handle,
                &mut error,
            )
        };
        let message = take_buffer(functions.free_buffer, error);
        let failure = match status {
            STATUS_OK if !handle.is_null() => None,
            STATUS_OK => Some("the plugin returned no handle".to_string()),
            STATUS_ERROR => Some(String::from_utf8_lossy(&message).into_owned()),
            STATUS_PANIC => Some(format!("panicked: {}", String::from_utf8_lossy(&message))),
            other => Some(format!("unknown status {other}")),
        };
        if let Some(message) = failure {
            return Err(PluginError::Open {
                path: given,
                name,
                message: one_line(&message),
            });
        }
        tracing::info!(plugin = %name, path = %file.display(), "storage plugin loaded");
        Ok(PluginEngine {
            functions,
            handle,
            name,
            path: given,
            closed: AtomicBool::new(false),
        })
    }

    /// The plugin's name, as it reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path the plugin was loaded from, as given to [`PluginEngine::load`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Turns a status (other than `OK` and `NOT_FOUND`) and its message into an error.
    fn failure(&self, operation: &str, status: Status, error: PluginBuffer) -> Error {
        let message = take_buffer(self.functions.free_buffer, error);
        let message = String::from_utf8_lossy(&message);
        match status {
            STATUS_CLOSED => Error::Closed,
            STATUS_PANIC => Error::Other(format!(
                "storage plugin {} panicked in {operation}: {message}",
                self.name
            )),
            STATUS_ERROR => Error::Other(format!(
                "storage plugin {}: {operation} failed: {message}",
                self.name
            )),
            other => Error::Other(format!(
                "storage plugin {} returned unknown status {other} from {operation}",
                self.name
            )),
        }
    }

    fn malformed(&self, operation: &str, problem: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "storage plugin {} returned a malformed {operation} result: {problem}",
            self.name
        ))
    }
}

/// The table's entries, or the name of the first null one.
fn check_entries(
    table: &PluginVTable,
) -> std::result::Result<(Functions, distkv_plugin_api::OpenFn), &'static str> {
    let functions = Functions {
        get: table.get.ok_or("get")?,
        write: table.write.ok_or("write")?,
        scan: table.scan.ok_or("scan")?,
        flush: table.flush.ok_or("flush")?,
        stats: table.stats.ok_or("stats")?,
        close: table.close.ok_or("close")?,
        destroy: table.destroy.ok_or("destroy")?,
        free_buffer: table.free_buffer.ok_or("free_buffer")?,
    };
    Ok((functions, table.open.ok_or("open")?))
}

/// Copies a plugin buffer and gives it back to the plugin.
fn take_buffer(free_buffer: distkv_plugin_api::FreeBufferFn, buffer: PluginBuffer) -> Vec<u8> {
    if buffer.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: a non-null buffer written by the plugin holds `len` initialised bytes and is
    // ours until we pass it to `free_buffer`, which we do once, right after copying.
    let bytes = unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.len) }.to_vec();
    // SAFETY: the buffer came from this plugin and has not been freed.
    unsafe { free_buffer(buffer) };
    bytes
}

fn key_bound(bound: &std::ops::Bound<Vec<u8>>) -> KeyBound {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    match bound {
        Unbounded => KeyBound {
            kind: BOUND_UNBOUNDED,
            ptr: std::ptr::null(),
            len: 0,
        },
        Included(k) => KeyBound {
            kind: BOUND_INCLUDED,
            ptr: k.as_ptr(),
            len: k.len(),
        },
        Excluded(k) => KeyBound {
            kind: BOUND_EXCLUDED,
            ptr: k.as_ptr(),
            len: k.len(),
        },
    }
}

impl StorageEngine for PluginEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        let (mut value, mut error) = (PluginBuffer::EMPTY, PluginBuffer::EMPTY);
        // SAFETY: a live handle of this plugin (freed only in `Drop`), a key borrowed for
        // the call, and two writable output slots.
        let status = unsafe {
            (self.functions.get)(self.handle, key.as_ptr(), key.len(), &mut value, &mut error)
        };
        match status {
            STATUS_OK => Ok(Some(take_buffer(self.functions.free_buffer, value))),
            STATUS_NOT_FOUND => Ok(None),
            other => Err(self.failure("get", other, error)),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        self.check_open()?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut encoder = BatchEncoder::new();
        for op in batch.ops() {
            match op {
                WriteOp::Put { key, value } => encoder.put(key, value),
                WriteOp::Delete { key } => encoder.delete(key),
            }
        }
        let bytes = encoder.finish();
        let mut error = PluginBuffer::EMPTY;
        // SAFETY: a live handle, the encoded batch borrowed for the call, a writable slot.
        let status =
            unsafe { (self.functions.write)(self.handle, bytes.as_ptr(), bytes.len(), &mut error) };
        match status {
            STATUS_OK => Ok(()),
            other => Err(self.failure("write", other, error)),
        }
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (start, end) = (key_bound(&range.start), key_bound(&range.end));
        let (mut page, mut error) = (PluginBuffer::EMPTY, PluginBuffer::EMPTY);
        // SAFETY: a live handle, bounds borrowing `range` (alive for the call), and two
        // writable output slots.
        let status = unsafe {
            (self.functions.scan)(self.handle, start, end, limit as u64, &mut page, &mut error)
        };
        if status != STATUS_OK {
            return Err(self.failure("scan", status, error));
        }
        let page = take_buffer(self.functions.free_buffer, page);
        let entries = codec::decode_page(&page).map_err(|e| self.malformed("scan", e))?;
        // Never hand wrong data to the node: check what the plugin promised.
        if entries.len() > limit {
            return Err(self.malformed(
                "scan",
                format!("{} entries for a limit of {limit}", entries.len()),
            ));
        }
        if let Some(i) = (0..entries.len()).find(|&i| {
            !range.contains(&entries[i].0) || (i > 0 && entries[i - 1].0 >= entries[i].0)
        }) {
            return Err(self.malformed(
                "scan",
                format!("entry {i} is out of the range or out of order"),
            ));
        }
        Ok(entries)
    }

    fn flush(&self) -> Result<()> {
        self.check_open()?;
        let mut error = PluginBuffer::EMPTY;
        // SAFETY: a live handle and a writable output slot.
        let status = unsafe { (self.functions.flush)(self.handle, &mut error) };
        match status {
            STATUS_OK => Ok(()),
            other => Err(self.failure("flush", other, error)),
        }
    }

    fn stats(&self) -> EngineStats {
        let mut stats = EngineStats::new(self.name.clone());
        if self.closed.load(Ordering::Acquire) {
            stats.set("closed", "true".to_string());
            return stats;
        }
        let (mut out, mut error) = (PluginBuffer::EMPTY, PluginBuffer::EMPTY);
        // SAFETY: a live handle and two writable output slots.
        let status = unsafe { (self.functions.stats)(self.handle, &mut out, &mut error) };
        let pairs = match status {
            STATUS_OK => codec::decode_stats(&take_buffer(self.functions.free_buffer, out))
                .map_err(|e| self.malformed("stats", e)),
            other => Err(self.failure("stats", other, error)),
        };
        match pairs {
            Ok(pairs) => {
                for (name, value) in pairs {
                    let value = if let Ok(n) = value.parse::<u64>() {
                        StatValue::U64(n)
                    } else if let Ok(x) = value.parse::<f64>() {
                        StatValue::F64(x)
                    } else {
                        StatValue::Text(value)
                    };
                    stats.set(name, value);
                }
            }
            Err(e) => {
                stats.set("error", e.to_string());
            }
        }
        stats
    }

    fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut error = PluginBuffer::EMPTY;
        // SAFETY: a live handle (still valid after close; freed only in `Drop`) and a
        // writable output slot.
        let status = unsafe { (self.functions.close)(self.handle, &mut error) };
        match status {
            STATUS_OK | STATUS_CLOSED => Ok(()),
            other => Err(self.failure("close", other, error)),
        }
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no other call on the handle is running or will run, and
        // `destroy` is called exactly once, here. The library is never unloaded.
        unsafe { (self.functions.destroy)(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_with_data_dir_adds_it_only_when_absent() {
        let mut options = serde_json::Map::new();
        options.insert("path".into(), "/x/db".into());
        let json = options_with_data_dir(&options, Path::new("/var/lib/distkv"));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({ "path": "/x/db", "data_dir": "/var/lib/distkv" })
        );
        options.insert("data_dir".into(), "/custom".into());
        let json = options_with_data_dir(&options, Path::new("/var/lib/distkv"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap()["data_dir"],
            "/custom"
        );
    }

    #[test]
    fn loader_messages_become_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
