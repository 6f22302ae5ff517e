//! The builder: for each target checkout -> actions -> changes -> layer -> checkin -> tag.
