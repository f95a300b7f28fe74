//! Test fixture: a valid shared library that exports no DistKV plugin symbol.

/// Some unrelated exported function.
#[no_mangle]
pub extern "C" fn unrelated_function() -> u32 {
    7
}
