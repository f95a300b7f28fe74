//! Test fixture: a plugin of the right ABI version whose function table lacks `scan`.
//! The host must refuse it at load time, naming the entry.

use std::ops::Bound;

use distkv_plugin_api::{Backend, BackendError, Entry, Op, Options, PluginVTable, ABI_VERSION};

/// A backend that stores nothing; only its table matters.
pub struct Nothing;

impl Backend for Nothing {
    const NAME: &'static str = "incomplete-table";

    fn open(_options: &Options) -> Result<Self, BackendError> {
        Ok(Nothing)
    }

    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(None)
    }

    fn write(&self, _ops: Vec<Op>) -> Result<(), BackendError> {
        Err(BackendError::failed("this fixture stores nothing"))
    }

    fn scan(
        &self,
        _start: Bound<&[u8]>,
        _end: Bound<&[u8]>,
        _limit: usize,
    ) -> Result<Vec<Entry>, BackendError> {
        Ok(Vec::new())
    }
}

static TABLE: PluginVTable = PluginVTable {
    scan: None,
    ..PluginVTable::for_backend::<Nothing>()
};

/// The right version, so that the table check is what fails.
#[no_mangle]
pub extern "C" fn distkv_plugin_abi_version() -> u32 {
    ABI_VERSION
}

/// A table with a null `scan` entry.
#[no_mangle]
pub extern "C" fn distkv_plugin_entry() -> *const PluginVTable {
    &TABLE
}
