//! Policy decided in userspace. L4 address rules are compiled into kernel maps by `ebpf::maps`;
//! identity-based authorization (who may talk to whom) needs the peer's certificate, so it is
//! decided here when the tunnel delivers a connection.

pub mod authz;
