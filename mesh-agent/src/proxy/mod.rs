//! Userspace data path. This issue carries plain TCP; the mTLS tunnel comes next.

pub mod outbound;
