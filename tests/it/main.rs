//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod actions;
mod btrfs;
mod cache;
mod cachekey;
mod checkouts;
mod compression;
mod concurrent;
mod config;
mod confine;
mod core;
mod differential;
mod distro;
mod example;
mod fidelity;
mod fulldisk;
mod gc;
mod generated;
mod honesty;
mod identical;
mod interop;
mod lpack;
mod names;
mod network;
mod oci;
mod overlay;
mod platform;
mod robust;
mod safety;
mod select;
mod stores;
mod strict;
mod tarball;
