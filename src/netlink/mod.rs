//! STUB
pub fn format_mac(mac: &[u8; 6]) -> String {
    format!("{mac:?}")
}
