//! Front ends: how clients reach the coordinator. Today the gRPC `distkv.v1.KeyValue`
//! service.

mod grpc;

pub use grpc::KeyValueService;
