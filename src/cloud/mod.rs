//! Alibaba Cloud clients: signed OpenAPI and instance metadata.
//!
//! - [`ecs::Ecs`]: typed ECS/VPC actions over two [`openapi::OpenApi`] clients (V3 signing,
//!   per-action rate limits, retries with backoff).
//!   [`route`] adds the VPC route-table actions of VPC mode.
//! - [`metadata::Metadata`]: the instance metadata service with the token flow.
//! - [`credentials::CredentialProvider`]: static keys, a credential file, or the RAM role.
pub mod codes;
pub mod credentials;
pub mod ecs;
mod ecs_addresses;
pub mod error;
pub mod http;
pub mod lifecycle;
pub mod metadata;
pub mod openapi;
pub mod parse;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod sign;

pub use credentials::{CredentialProvider, CredentialSource, Credentials};
pub use ecs::{CloudConfig, Ecs, EniFilter, EniInfo, InstanceTypeLimits, VSwitchInfo};
pub use error::CloudError;
pub use http::HttpConfig;
pub use metadata::{MetaEni, MetaEniIpv6, Metadata};
pub use openapi::{OpenApi, OpenApiConfig};
pub use retry::RetryPolicy;
