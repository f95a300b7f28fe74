//! Front ends: how clients reach the coordinator. Today the gRPC `distkv.v1.KeyValue`
//! service.

mod grpc;
mod limits;

pub use grpc::{KeyValueService, WRITE_OUTCOME};
pub use limits::{ClientLimitsLayer, SizeLimits};
