//! STUB
pub fn set(_key: &str, _value: &str) -> crate::Result<()> {
    Ok(())
}
