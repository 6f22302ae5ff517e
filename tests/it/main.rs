//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod cache;
mod compression;
mod example;
mod select;
