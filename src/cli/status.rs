use super::checkout::Record;
use super::{GlobalArgs, Session, CHECKOUT};

pub fn run(g: &GlobalArgs) -> anyhow::Result<()> {
    let session = Session::open(g)?;
    let c = &session.config;
    println!("driver:    {}", session.driver.name());
    println!(
        "layout:    {} ({} tags)",
        session.layout.root().display(),
        session.layout.tags()?.len()
    );
    match c.driver {
        crate::config::DriverKind::Plain => println!("store:     {}", c.storedir.display()),
        crate::config::DriverKind::Btrfs => {
            println!(
                "store:     {} (btrfs on {})",
                c.btrfsmount.display(),
                c.lofile.display()
            )
        }
    }
    println!("snapshots: {}", session.driver.snapshots()?.len());
    match session.driver.work_tree(CHECKOUT)? {
        Some(tree) => {
            let tag = Record::load(&c.storedir)?.map_or_else(|| "?".to_string(), |r| r.tag);
            println!("checkout:  {tag} at {}", tree.path.display());
        }
        None => println!("checkout:  none"),
    }
    Ok(())
}
