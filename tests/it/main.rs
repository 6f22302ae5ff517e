//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod btrfs;
mod cache;
mod compression;
mod config;
mod core;
mod distro;
mod example;
mod fulldisk;
mod identical;
mod interop;
mod lpack;
mod oci;
mod platform;
mod robust;
mod safety;
mod select;
mod stores;
mod strict;
mod tarball;
