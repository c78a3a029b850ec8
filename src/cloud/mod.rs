//! Alibaba Cloud clients: signed OpenAPI and instance metadata.
pub mod sign;
