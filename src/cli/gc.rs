use std::collections::{BTreeMap, BTreeSet};

use clap::Args;

use super::{GlobalArgs, Session, CHECKOUT};
use crate::build::tags::parse_dated;
use crate::driver::ChainId;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep every dated tag (by default only the newest of each name stays)
    #[arg(long)]
    pub keep_dated: bool,
}

pub fn run(g: &GlobalArgs, args: &GcArgs) -> anyhow::Result<()> {
    let session = Session::open(g)?;
    let layout = &session.layout;
    let tags = layout.tags()?;

    if !args.keep_dated {
        let old = older_dated(&tags.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>());
        if !old.is_empty() {
            layout.remove_tags(&old)?;
            println!("removed {} older dated tags", old.len());
        }
    }

    let stats = layout.gc()?;
    println!("removed {} blobs ({} bytes)", stats.blobs, stats.bytes);

    // Every prefix of every tagged image's layers stays: they are the bases
    // that the next build or materialisation starts from.
    let mut keep: BTreeSet<ChainId> = BTreeSet::from([ChainId::empty()]);
    for (_, desc) in layout.tags()? {
        let image = layout.image(&desc)?;
        let ids = image.config.rootfs().diff_ids();
        keep.extend((0..=ids.len()).map(|n| ChainId::of(&ids[..n])));
    }
    if let Some(tree) = session.driver.work_tree(CHECKOUT)? {
        keep.insert(tree.base);
    }
    let mut removed = 0;
    for id in session.driver.snapshots()? {
        if !keep.contains(&id) {
            session.driver.remove(&id)?;
            removed += 1;
        }
    }
    println!("removed {removed} snapshots");
    Ok(())
}

/// Dated tags other than the newest of each name.
fn older_dated(tags: &[String]) -> Vec<String> {
    let mut newest: BTreeMap<&str, (&str, u32)> = BTreeMap::new();
    for tag in tags {
        if let Some((name, when)) = parse_dated(tag) {
            let e = newest.entry(name).or_insert(when);
            *e = (*e).max(when);
        }
    }
    tags.iter()
        .filter(|t| parse_dated(t).is_some_and(|(name, when)| newest[name] != when))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_dated_tag_of_each_name() {
        let tags: Vec<String> = [
            "a",
            "a-2026-01-01_3",
            "a-2026-01-02_1",
            "a-2026-01-02_2",
            "b-2026-01-01_1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(older_dated(&tags), vec!["a-2026-01-01_3", "a-2026-01-02_1"]);
    }
}
