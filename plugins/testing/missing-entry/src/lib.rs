//! Test fixture: a library that exports the ABI version but not `distkv_plugin_entry`.

/// The right version, so that the host's next check (the entry symbol) is what fails.
#[no_mangle]
pub extern "C" fn distkv_plugin_abi_version() -> u32 {
    distkv_plugin_api::ABI_VERSION
}
