//! STUB
use crate::Result;
use crate::netns::NetNs;
pub struct VethSpec<'a> {
    pub netns: &'a NetNs,
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub ip: std::net::Ipv4Addr,
    pub mtu: u32,
}
pub struct VethInfo {
    pub host_ifname: String,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    pub mtu: u32,
}
pub fn setup(_spec: &VethSpec) -> Result<VethInfo> {
    todo!()
}
pub fn check(_spec: &VethSpec) -> Result<()> {
    todo!()
}
pub fn teardown(_host_ifname: &str) -> Result<()> {
    todo!()
}
