//! genoci: build OCI images from a YAML spec, one layer per target, on a
//! snapshot store (btrfs subvolumes or plain directory copies).

pub mod actions;
pub mod builder;
pub mod change;
pub mod cli;
pub mod config;
pub mod driver;
pub mod fsutil;
pub mod io_error;
pub mod layout;
pub mod lock;
pub mod mountinfo;
pub mod sandbox;
pub mod signals;
pub mod spec;
pub mod xattr;

/// An error and its causes on one line, `a: b: c`, as `anyhow` prints them
/// with `{:#}`: each error's message leaves its cause to the chain.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

#[cfg(test)]
pub(crate) mod test_support;
