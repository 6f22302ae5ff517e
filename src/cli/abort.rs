use anyhow::anyhow;

use super::checkout::Record;
use super::{GlobalArgs, Session, CHECKOUT};

pub fn run(g: &GlobalArgs) -> anyhow::Result<()> {
    let session = Session::open(g)?;
    let tree = session
        .driver
        .work_tree(CHECKOUT)?
        .ok_or_else(|| anyhow!("no checkout in progress"))?;
    crate::actions::hooks::release_mounts_under(&tree.path)?;
    let path = tree.path.clone();
    session.driver.discard(tree)?;
    Record::clear(&session.config.storedir)?;
    println!("discarded {}", path.display());
    Ok(())
}
