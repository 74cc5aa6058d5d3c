//! WebSocket connections: the handshake ([`upgrade`]) and the loop that runs each socket
//! ([`connection`]).

pub mod connection;
pub mod upgrade;
