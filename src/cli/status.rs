use super::checkout::{open_checkout, tree_name};
use super::{Access, GlobalArgs, Session};

pub fn run(g: &GlobalArgs) -> anyhow::Result<()> {
    let session = Session::open(g, Access::Use)?;
    let c = &session.config;
    println!(
        "driver:    {} ({})",
        session.driver.name(),
        session.driver_reason
    );
    println!(
        "layout:    {} ({} tags)",
        session.layout.root().display(),
        session.layout.tags()?.len()
    );
    match c.driver {
        crate::config::DriverKind::Plain | crate::config::DriverKind::Auto => {
            println!("store:     {}", c.storedir.display())
        }
        crate::config::DriverKind::Overlay => {
            println!(
                "store:     {} (overlay)",
                c.storedir.join("overlay").display()
            )
        }
        crate::config::DriverKind::Btrfs => match &c.lofile {
            Some(lofile) => println!(
                "store:     {} (btrfs on the loopback file {})",
                c.btrfs_store().display(),
                lofile.display()
            ),
            None => println!(
                "store:     {} (btrfs subvolume on the existing filesystem of {}, no loopback)",
                c.btrfs_store().display(),
                c.btrfsmount.display()
            ),
        },
    }
    println!("snapshots: {}", session.driver.snapshots()?.len());
    match session.driver.work_tree(&tree_name(&session.layout))? {
        Some(tree) => {
            let tag = open_checkout(&session.layout, session.driver.as_ref())
                .ok()
                .flatten()
                .map_or_else(|| "?".to_string(), |c| c.record.tag);
            println!("checkout:  {tag} at {}", tree.path.display());
        }
        None => println!("checkout:  none"),
    }
    Ok(())
}
