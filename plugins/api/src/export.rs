//! The plugin side of the ABI: `extern "C"` shims that call a [`Backend`], catch panics,
//! and move results into plugin-owned buffers; and the [`export_plugin!`] macro.
//!
//! [`export_plugin!`]: crate::export_plugin

/// Exports a [`Backend`](crate::Backend) implementation as a DistKV plugin: emits the
/// two C symbols `distkv_plugin_abi_version` and `distkv_plugin_entry` of the
/// [ABI](crate#the-abi-version-1). Use it once, at the root of a `cdylib` crate, as
/// `distkv_plugin_api::export_plugin!(MyBackend);` (the [crate docs](crate) show a
/// complete plugin).
#[macro_export]
macro_rules! export_plugin {
    ($backend:ty) => {
        /// The DistKV plugin ABI version this library was built for.
        #[no_mangle]
        pub extern "C" fn distkv_plugin_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// The DistKV plugin function table of this library.
        #[no_mangle]
        pub extern "C" fn distkv_plugin_entry() -> *const $crate::PluginVTable {
            static VTABLE: $crate::PluginVTable = $crate::PluginVTable::for_backend::<$backend>();
            &VTABLE
        }
    };
}

pub(crate) mod shims {
    use std::any::Any;
    use std::mem::ManuallyDrop;
    use std::ops::Bound;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::{
        codec, Backend, BackendError, Handle, KeyBound, Options, PluginBuffer, Status,
        BOUND_EXCLUDED, BOUND_INCLUDED, BOUND_UNBOUNDED, STATUS_CLOSED, STATUS_ERROR,
        STATUS_NOT_FOUND, STATUS_OK, STATUS_PANIC,
    };

    /// What a handle points to: the backend and whether it was closed, so that every call
    /// after `close` fails with `STATUS_CLOSED` whatever the backend does.
    struct Instance<B> {
        backend: B,
        closed: AtomicBool,
    }

    impl<B: Backend> Instance<B> {
        fn open(&self) -> Result<&B, BackendError> {
            if self.closed.load(Ordering::Acquire) {
                return Err(BackendError::Closed);
            }
            Ok(&self.backend)
        }
    }

    /// Hands `bytes` to the host through `out`, which then owns them until `free_buffer`.
    fn give(out: *mut PluginBuffer, bytes: Vec<u8>) -> Result<(), BackendError> {
        if out.is_null() {
            return Err(BackendError::failed("the host passed a null output buffer"));
        }
        let mut bytes = ManuallyDrop::new(bytes);
        let buffer = PluginBuffer {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            capacity: bytes.capacity(),
        };
        // SAFETY: `out` is non-null, and the ABI requires the host to pass a pointer to a
        // writable `PluginBuffer` slot that outlives the call.
        unsafe { out.write(buffer) };
        Ok(())
    }

    /// Runs `body`, turning its error or panic into a status and a message in `error_out`.
    /// No panic leaves this function, so none unwinds across the C boundary.
    fn guard(
        error_out: *mut PluginBuffer,
        body: impl FnOnce() -> Result<Status, BackendError>,
    ) -> Status {
        let (status, message) = match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(status)) => return status,
            Ok(Err(BackendError::Closed)) => return STATUS_CLOSED,
            Ok(Err(BackendError::Failed(message))) => (STATUS_ERROR, message),
            Err(payload) => (STATUS_PANIC, panic_message(payload)),
        };
        // Ignore a null error slot: the status alone still says what happened.
        let _ = give(error_out, message.into_bytes());
        status
    }

    fn panic_message(payload: Box<dyn Any + Send>) -> String {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-text payload".to_string()
        };
        // Dropping a payload can itself panic; forget it instead (a small leak on a path
        // that is already a bug in the plugin).
        std::mem::forget(payload);
        message
    }

    /// Borrows `len` bytes at `ptr` from the host.
    ///
    /// # Safety
    /// `ptr` must be null with `len == 0`, or point to `len` readable bytes that stay
    /// valid and unchanged for `'a` (the ABI promises this for the duration of a call).
    unsafe fn borrow<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], BackendError> {
        if len == 0 {
            return Ok(&[]);
        }
        if ptr.is_null() {
            return Err(BackendError::failed(
                "the host passed a null buffer with a length",
            ));
        }
        // SAFETY: non-null, and the caller guarantees `len` readable bytes for `'a`.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The instance behind `handle`.
    ///
    /// # Safety
    /// `handle` must be null or a handle that `open::<B>` returned and that `destroy` has
    /// not freed (the ABI promises this).
    unsafe fn instance<'a, B: Backend>(handle: Handle) -> Result<&'a Instance<B>, BackendError> {
        // SAFETY: a non-null handle came from `Box::into_raw` of an `Instance<B>` in
        // `open::<B>` and is alive until `destroy`; we only hand out shared references.
        unsafe { handle.cast::<Instance<B>>().as_ref() }
            .ok_or_else(|| BackendError::failed("the host passed a null handle"))
    }

    /// # Safety
    /// `bound.ptr` must satisfy [`borrow`]'s contract for `bound.len` bytes.
    unsafe fn bound<'a>(bound: KeyBound) -> Result<Bound<&'a [u8]>, BackendError> {
        Ok(match bound.kind {
            BOUND_UNBOUNDED => Bound::Unbounded,
            // SAFETY: forwarded from this function's contract.
            BOUND_INCLUDED => Bound::Included(unsafe { borrow(bound.ptr, bound.len)? }),
            // SAFETY: as above.
            BOUND_EXCLUDED => Bound::Excluded(unsafe { borrow(bound.ptr, bound.len)? }),
            other => {
                return Err(BackendError::failed(format!(
                    "unknown scan bound kind {other}"
                )))
            }
        })
    }

    fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
        match (start, end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e) | Bound::Included(e)) => {
                s >= e
            }
            _ => false,
        }
    }

    pub(crate) unsafe extern "C" fn open<B: Backend>(
        options: *const u8,
        options_len: usize,
        handle_out: *mut Handle,
        error_out: *mut PluginBuffer,
    ) -> Status {
        guard(error_out, || {
            // SAFETY: the ABI lends `options_len` bytes at `options` for this call.
            let text = unsafe { borrow(options, options_len)? };
            let options: Options = match serde_json::from_slice(text) {
                Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
                Ok(other) => {
                    return Err(BackendError::failed(format!(
                        "plugin options must be a JSON object, got {other}"
                    )))
                }
                Err(e) => {
                    return Err(BackendError::failed(format!(
                        "plugin options are not JSON: {e}"
                    )))
                }
            };
            if handle_out.is_null() {
                return Err(BackendError::failed("the host passed a null handle slot"));
            }
            let backend = B::open(&options)?;
            let instance = Box::new(Instance {
                backend,
                closed: AtomicBool::new(false),
            });
            // SAFETY: `handle_out` is non-null and, by the ABI, points to a writable slot.
            unsafe { handle_out.write(Box::into_raw(instance).cast()) };
            Ok(STATUS_OK)
        })
    }

    pub(crate) unsafe extern "C" fn get<B: Backend>(
        handle: Handle,
        key: *const u8,
        key_len: usize,
        value_out: *mut PluginBuffer,
        error_out: *mut PluginBuffer,
    ) -> Status {
        guard(error_out, || {
            // SAFETY: the ABI passes a live handle of this plugin and lends the key.
            let (instance, key) = unsafe { (instance::<B>(handle)?, borrow(key, key_len)?) };
            match instance.open()?.get(key)? {
                Some(value) => give(value_out, value).map(|()| STATUS_OK),
                None => Ok(STATUS_NOT_FOUND),
            }
        })
    }

    pub(crate) unsafe extern "C" fn write<B: Backend>(
        handle: Handle,
        batch: *const u8,
        batch_len: usize,
        error_out: *mut PluginBuffer,
    ) -> Status {
        guard(error_out, || {
            // SAFETY: the ABI passes a live handle of this plugin and lends the batch.
            let (instance, batch) = unsafe { (instance::<B>(handle)?, borrow(batch, batch_len)?) };
            let backend = instance.open()?;
            let ops = codec::decode_batch(batch).map_err(BackendError::failed)?;
            if !ops.is_empty() {
                backend.write(ops)?;
            }
            Ok(STATUS_OK)
        })
    }

    pub(crate) unsafe extern "C" fn scan<B: Backend>(
        handle: Handle,
        start: KeyBound,
        end: KeyBound,
        limit: u64,
        page_out: *mut PluginBuffer,
        error_out: *mut PluginBuffer,
    ) -> Status {
        guard(error_out, || {
            // SAFETY: the ABI passes a live handle of this plugin and lends both bounds.
            let (instance, start, end) =
                unsafe { (instance::<B>(handle)?, bound(start)?, bound(end)?) };
            let backend = instance.open()?;
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let entries = if limit == 0 || range_is_empty(start, end) {
                Vec::new()
            } else {
                backend.scan(start, end, limit)?
            };
            give(page_out, codec::encode_page(&entries)).map(|()| STATUS_OK)
        })
    }

    pub(crate) unsafe extern "C" fn flush<B: Backend>(
        handle: Handle,
        error_out: *mut PluginBuffer,
    ) -> Status {
        guard(error_out, || {
            // SAFETY: the ABI passes a live handle of this plugin.
            unsafe { instance::<B>(handle)? }
                .open()?
                .flush()
                .map(|()| STATUS_OK)
        })
    }

    pub(crate) unsafe extern "C" fn stats<B: Backend>(
        handle: Handle,
        stats_out: *mut PluginBuffer,
        error_out: *mut PluginBuffer,
    ) -> Status {
        guard(error_out, || {
            // SAFETY: the ABI passes a live handle of this plugin.
            let stats = unsafe { instance::<B>(handle)? }.open()?.stats();
            let buf = codec::encode_stats(stats.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            give(stats_out, buf).map(|()| STATUS_OK)
        })
    }

    pub(crate) unsafe extern "C" fn close<B: Backend>(
        handle: Handle,
        error_out: *mut PluginBuffer,
    ) -> Status {
        guard(error_out, || {
            // SAFETY: the ABI passes a live handle of this plugin.
            let instance = unsafe { instance::<B>(handle)? };
            if instance.closed.swap(true, Ordering::AcqRel) {
                return Ok(STATUS_OK);
            }
            instance.backend.close().map(|()| STATUS_OK)
        })
    }

    pub(crate) unsafe extern "C" fn destroy<B: Backend>(handle: Handle) {
        if handle.is_null() {
            return;
        }
        // A panic in the backend's `Drop` must not unwind into the host; the handle is gone
        // either way.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the handle came from `Box::into_raw` in `open::<B>`, and the ABI calls
            // `destroy` once, after every other call on it has returned.
            drop(unsafe { Box::from_raw(handle.cast::<Instance<B>>()) });
        }));
    }

    pub(crate) unsafe extern "C" fn free_buffer(buffer: PluginBuffer) {
        if buffer.ptr.is_null() {
            return;
        }
        // SAFETY: a non-null buffer was made by `give` from a `Vec<u8>` of this library's
        // allocator with exactly these parts, and the host frees each buffer once.
        drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.capacity) });
    }
}
