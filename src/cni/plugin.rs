//! CNI commands.
pub fn main() -> u8 {
    1
}
