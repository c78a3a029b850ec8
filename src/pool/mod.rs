//! Pure address-pool logic: no I/O, no clocks. The daemon drives it and persists its state.
//!
//! The two ENI pools (`shared_eni`: secondary IPs; `exclusive_eni`: whole ENIs) share their
//! vocabulary (`eni`), the choice of vSwitch (`vswitch`), the retry back-off (`backoff`), the ops
//! in flight (`flights`), the planning clock (`schedule`) and the course of a reconcile
//! (`reconcile`).

mod backoff;
pub mod cidr;
mod eni;
pub mod exclusive_eni;
mod flights;
mod reconcile;
mod schedule;
pub mod shared_eni;
#[cfg(test)]
mod test_support;
mod vswitch;
