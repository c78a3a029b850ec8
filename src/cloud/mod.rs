//! Alibaba Cloud clients: signed OpenAPI and instance metadata.
