//! The actions of a target, in order: `pre`, `expand`, `copy`, `install`,
//! `run`, `post`. Each works on the target's work tree and never writes
//! outside it.

pub mod copy;
pub mod expand;
pub mod hooks;
pub mod install;
pub mod run;
