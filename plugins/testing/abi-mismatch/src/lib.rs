//! Test fixture: a library that declares a plugin ABI version the host does not speak.
//! The host must refuse it before calling anything else.

use distkv_plugin_api::{PluginVTable, ABI_VERSION};

/// One version ahead of the host.
#[no_mangle]
pub extern "C" fn distkv_plugin_abi_version() -> u32 {
    ABI_VERSION + 1
}

/// Never called by a correct host (the version check comes first).
#[no_mangle]
pub extern "C" fn distkv_plugin_entry() -> *const PluginVTable {
    std::ptr::null()
}
