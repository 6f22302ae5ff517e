//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod btrfs;
mod example;
mod lpack;
mod robust;
mod stores;
