//! Pure address-pool logic: no I/O, no clocks. The daemon drives it and persists its state.

pub mod cidr;
pub mod exclusive_eni;
pub mod shared_eni;
