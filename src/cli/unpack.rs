use super::{Access, GlobalArgs, Session};
use crate::builder::ensure_snapshot;

pub fn run(g: &GlobalArgs) -> anyhow::Result<()> {
    let session = Session::open(g, Access::Use)?;
    let tags = session.layout.tags()?;
    for (tag, desc) in &tags {
        let image = session.layout.image(desc)?;
        let chain = ensure_snapshot(&session.layout, session.driver.as_ref(), &image)?;
        println!("{tag}: {}", session.driver.snapshot_path(&chain)?.display());
    }
    Ok(())
}
