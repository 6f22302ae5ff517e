//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod btrfs;
mod core;
mod distro;
mod example;
mod interop;
mod lpack;
mod oci;
mod robust;
mod safety;
mod stores;
mod tarball;
