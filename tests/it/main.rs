//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod btrfs;
mod cache;
mod cachekey;
mod checkouts;
mod compression;
mod config;
mod confine;
mod core;
mod distro;
mod example;
mod gc;
mod honesty;
mod interop;
mod lpack;
mod oci;
mod overlay;
mod robust;
mod safety;
mod select;
mod stores;
mod tarball;
