use super::GlobalArgs;

pub fn run(g: &GlobalArgs) -> anyhow::Result<()> {
    let config = g.load_config()?;
    let layout = crate::layout::Layout::open(&config.layoutdir)?;
    for (tag, _) in layout.tags()? {
        println!("{tag}");
    }
    Ok(())
}
