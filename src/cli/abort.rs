use anyhow::anyhow;

use super::{Access, GlobalArgs, Session};

pub fn run(g: &GlobalArgs) -> anyhow::Result<()> {
    let session = Session::open(g, Access::Use)?;
    // Only this layout's checkout: another layout's in a shared store is not ours to lose.
    let tree = session
        .driver
        .work_tree(&super::checkout::tree_name(&session.layout))?
        .ok_or_else(|| anyhow!("no checkout in progress"))?;
    crate::mountinfo::release_mounts_under(&tree.path, session.driver.tree_is_mount())?;
    let path = tree.path.clone();
    session.driver.discard(tree)?;
    println!("discarded {}", path.display());
    Ok(())
}
