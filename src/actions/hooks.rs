//! The `hooks` action.
