use super::GlobalArgs;

pub fn run(g: &GlobalArgs) -> anyhow::Result<()> {
    let _ = g;
    todo!()
}
