//! STUB
pub mod veth;
pub const POD_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);
pub const HOST_VETH_PREFIX: &str = "tw";
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("tw{container_id}{ifname}")
}
