//! The btrfs driver: snapshots are read-only subvolumes on a loopback
//! filesystem; `changes` comes from a send stream with no data.
