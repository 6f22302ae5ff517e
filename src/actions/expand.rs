//! The `expand` action.
