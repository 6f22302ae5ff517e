//! genoci: build OCI images from a YAML spec, one layer per target, on a
//! snapshot store (btrfs subvolumes or plain directory copies).

pub mod actions;
pub mod build;
pub mod cli;
pub mod config;
pub mod driver;
pub mod fsutil;
pub mod layout;
pub mod sandbox;
pub mod signals;
pub mod spec;
pub mod xattr;
