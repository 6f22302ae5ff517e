//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod btrfs;
mod cache;
mod compression;
mod core;
mod differential;
mod distro;
mod example;
mod fidelity;
mod interop;
mod lpack;
mod oci;
mod robust;
mod safety;
mod select;
mod stores;
mod tarball;
