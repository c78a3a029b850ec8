//! STUB (replaced by branch net)
use crate::Result;
use std::path::{Path, PathBuf};
pub struct NetNs {
    path: PathBuf,
}
impl NetNs {
    pub fn open(path: &Path) -> Result<NetNs> {
        Ok(NetNs { path: path.into() })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}
