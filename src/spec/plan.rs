//! From raw targets to a [`BuildPlan`]: bases, cycles, tag names, host files, order.

use std::path::Path;

use super::{BuildPlan, SpecError};

/// Read and check the spec at `file`. `existing_tag` says whether a tag is
/// already in the layout (a base not built by this spec must be).
pub fn load(file: &Path, existing_tag: &dyn Fn(&str) -> bool) -> Result<BuildPlan, SpecError> {
    let _ = (file, existing_tag);
    todo!()
}
