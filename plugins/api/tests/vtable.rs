//! The export layer, called through its C function table in-process (as the host calls a
//! loaded plugin): statuses, buffers, panics and the closed state.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use distkv_plugin_api::codec;
use distkv_plugin_api::{
    Backend, BackendError, Entry, Handle, KeyBound, Op, Options, PluginBuffer, PluginVTable,
    Status, ABI_VERSION, BOUND_EXCLUDED, BOUND_INCLUDED, BOUND_UNBOUNDED, STATUS_CLOSED,
    STATUS_ERROR, STATUS_NOT_FOUND, STATUS_OK, STATUS_PANIC,
};

/// A map that panics on the key `b"boom"` and records the scans it is asked for.
struct Probe {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    scans: Mutex<usize>,
}

impl Backend for Probe {
    const NAME: &'static str = "probe";

    fn open(options: &Options) -> Result<Self, BackendError> {
        if options.contains_key("fail") {
            return Err(BackendError::failed("asked to fail"));
        }
        Ok(Probe {
            map: Mutex::new(BTreeMap::new()),
            scans: Mutex::new(0),
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        assert!(key != b"boom", "boom requested");
        Ok(self.map.lock().unwrap().get(key).cloned())
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let mut map = self.map.lock().unwrap();
        for op in ops {
            match op {
                Op::Put { key, value } => map.insert(key, value),
                Op::Delete { key } => map.remove(&key),
            };
        }
        Ok(())
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, BackendError> {
        *self.scans.lock().unwrap() += 1;
        let map = self.map.lock().unwrap();
        Ok(map
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn stats(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("scans".to_string(), self.scans.lock().unwrap().to_string())])
    }
}

static TABLE: PluginVTable = PluginVTable::for_backend::<Probe>();

/// Copies and frees a buffer the table returned.
fn take(buf: PluginBuffer) -> Vec<u8> {
    if buf.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the export layer wrote a buffer of `len` bytes that we own until freed.
    let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
    // SAFETY: freed once, by the library that allocated it.
    unsafe { TABLE.free_buffer.unwrap()(buf) };
    bytes
}

fn open(options: &str) -> Result<Handle, (Status, String)> {
    let mut handle: Handle = std::ptr::null_mut();
    let mut error = PluginBuffer::EMPTY;
    // SAFETY: valid options bytes and output slots for the call.
    let status =
        unsafe { TABLE.open.unwrap()(options.as_ptr(), options.len(), &mut handle, &mut error) };
    match status {
        STATUS_OK => Ok(handle),
        other => Err((other, String::from_utf8(take(error)).unwrap())),
    }
}

fn get(handle: Handle, key: &[u8]) -> (Status, Vec<u8>) {
    let (mut value, mut error) = (PluginBuffer::EMPTY, PluginBuffer::EMPTY);
    // SAFETY: a live handle, a borrowed key, writable output slots.
    let status =
        unsafe { TABLE.get.unwrap()(handle, key.as_ptr(), key.len(), &mut value, &mut error) };
    match status {
        STATUS_OK => (status, take(value)),
        _ => (status, take(error)),
    }
}

fn write(handle: Handle, ops: &[Op]) -> Status {
    let batch = codec::encode_batch(ops);
    let mut error = PluginBuffer::EMPTY;
    // SAFETY: a live handle, a borrowed batch, a writable output slot.
    let status = unsafe { TABLE.write.unwrap()(handle, batch.as_ptr(), batch.len(), &mut error) };
    take(error);
    status
}

fn scan(handle: Handle, start: KeyBound, end: KeyBound, limit: u64) -> (Status, Vec<u8>) {
    let (mut page, mut error) = (PluginBuffer::EMPTY, PluginBuffer::EMPTY);
    // SAFETY: a live handle, bounds borrowing live keys, writable output slots.
    let status = unsafe { TABLE.scan.unwrap()(handle, start, end, limit, &mut page, &mut error) };
    match status {
        STATUS_OK => (status, take(page)),
        _ => (status, take(error)),
    }
}

fn bound(kind: u32, key: &[u8]) -> KeyBound {
    KeyBound {
        kind,
        ptr: key.as_ptr(),
        len: key.len(),
    }
}

fn stats(handle: Handle) -> Vec<(String, String)> {
    let (mut out, mut error) = (PluginBuffer::EMPTY, PluginBuffer::EMPTY);
    // SAFETY: a live handle and writable output slots.
    let status = unsafe { TABLE.stats.unwrap()(handle, &mut out, &mut error) };
    assert_eq!(status, STATUS_OK);
    codec::decode_stats(&take(out)).unwrap()
}

fn destroy(handle: Handle) {
    // SAFETY: the handle is live and not used afterwards.
    unsafe { TABLE.destroy.unwrap()(handle) };
}

#[test]
fn table_describes_the_backend() {
    assert_eq!(TABLE.abi_version, ABI_VERSION);
    assert_eq!(TABLE.size, std::mem::size_of::<PluginVTable>());
    // SAFETY: the name is static data of `name_len` bytes.
    let name = unsafe { std::slice::from_raw_parts(TABLE.name_ptr, TABLE.name_len) };
    assert_eq!(name, b"probe");
}

#[test]
fn open_refuses_non_objects_and_reports_backend_errors() {
    assert_eq!(
        open("[1]").unwrap_err(),
        (
            STATUS_ERROR,
            "plugin options must be a JSON object, got [1]".to_string()
        )
    );
    let (status, message) = open("{").unwrap_err();
    assert_eq!(status, STATUS_ERROR);
    assert!(
        message.starts_with("plugin options are not JSON"),
        "{message}"
    );
    assert_eq!(
        open(r#"{"fail": true}"#).unwrap_err(),
        (STATUS_ERROR, "asked to fail".to_string())
    );
}

#[test]
fn get_write_scan_round_trip_through_buffers() {
    let h = open("{}").unwrap();
    let ops = [
        Op::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        },
        Op::Put {
            key: b"b".to_vec(),
            value: Vec::new(),
        },
        Op::Put {
            key: b"c".to_vec(),
            value: b"3".to_vec(),
        },
    ];
    assert_eq!(write(h, &ops), STATUS_OK);
    assert_eq!(get(h, b"a"), (STATUS_OK, b"1".to_vec()));
    assert_eq!(get(h, b"b"), (STATUS_OK, Vec::new()));
    assert_eq!(get(h, b"zz").0, STATUS_NOT_FOUND);
    let (status, page) = scan(
        h,
        bound(BOUND_EXCLUDED, b"a"),
        bound(BOUND_UNBOUNDED, b""),
        10,
    );
    assert_eq!(status, STATUS_OK);
    assert_eq!(
        codec::decode_page(&page).unwrap(),
        vec![(b"b".to_vec(), Vec::new()), (b"c".to_vec(), b"3".to_vec())]
    );
    destroy(h);
}

#[test]
fn empty_ranges_and_zero_limits_never_reach_the_backend() {
    let h = open("{}").unwrap();
    for (start, end, limit) in [
        (bound(BOUND_INCLUDED, b"m"), bound(BOUND_INCLUDED, b"a"), 10),
        (bound(BOUND_INCLUDED, b"m"), bound(BOUND_EXCLUDED, b"m"), 10),
        (bound(BOUND_UNBOUNDED, b""), bound(BOUND_UNBOUNDED, b""), 0),
    ] {
        let (status, page) = scan(h, start, end, limit);
        assert_eq!(status, STATUS_OK);
        assert!(codec::decode_page(&page).unwrap().is_empty());
    }
    assert_eq!(stats(h), vec![("scans".to_string(), "0".to_string())]);
    let (status, message) = scan(h, bound(9, b""), bound(BOUND_UNBOUNDED, b""), 1);
    assert_eq!(
        (status, String::from_utf8(message).unwrap()),
        (STATUS_ERROR, "unknown scan bound kind 9".to_string())
    );
    destroy(h);
}

#[test]
fn a_panic_becomes_a_status_with_its_message() {
    let h = open("{}").unwrap();
    let (status, message) = get(h, b"boom");
    assert_eq!(status, STATUS_PANIC);
    assert_eq!(String::from_utf8(message).unwrap(), "boom requested");
    // The backend still answers afterwards.
    assert_eq!(get(h, b"other").0, STATUS_NOT_FOUND);
    destroy(h);
}

#[test]
fn after_close_every_call_is_closed_and_close_is_idempotent() {
    let h = open("{}").unwrap();
    let mut error = PluginBuffer::EMPTY;
    // SAFETY: a live handle and a writable slot.
    assert_eq!(unsafe { TABLE.close.unwrap()(h, &mut error) }, STATUS_OK);
    // SAFETY: as above.
    assert_eq!(unsafe { TABLE.close.unwrap()(h, &mut error) }, STATUS_OK);
    assert_eq!(get(h, b"a").0, STATUS_CLOSED);
    assert_eq!(
        write(h, &[Op::Delete { key: b"a".to_vec() }]),
        STATUS_CLOSED
    );
    // SAFETY: as above.
    assert_eq!(
        unsafe { TABLE.flush.unwrap()(h, &mut error) },
        STATUS_CLOSED
    );
    destroy(h);
}

#[test]
fn a_null_handle_is_an_error_not_a_crash() {
    let (status, message) = get(std::ptr::null_mut(), b"a");
    assert_eq!(
        (status, String::from_utf8(message).unwrap()),
        (STATUS_ERROR, "the host passed a null handle".to_string())
    );
    destroy(std::ptr::null_mut());
}

#[test]
fn a_malformed_batch_is_refused() {
    let h = open("{}").unwrap();
    let mut error = PluginBuffer::EMPTY;
    let junk = [1u8, 0, 0];
    // SAFETY: a live handle, a borrowed buffer, a writable slot.
    let status = unsafe { TABLE.write.unwrap()(h, junk.as_ptr(), junk.len(), &mut error) };
    assert_eq!(status, STATUS_ERROR);
    let message = String::from_utf8(take(error)).unwrap();
    assert!(message.starts_with("malformed batch buffer"), "{message}");
    destroy(h);
}
