//! Connection timing that both sides of idbridge's HTTP protocols rely on.

use std::time::Duration;

/// The tenant closes a connection that carries no request for this long:
/// one that has not sent its first request, and a keep-alive connection
/// after an answer (hyper's header-read timeout runs from the end of the
/// last answer).
pub const SERVER_IDLE_CLOSE: Duration = Duration::from_secs(15);

/// idbridge's clients of the tenant reuse an idle connection only this long,
/// well inside [`SERVER_IDLE_CLOSE`]: a request sent on a connection the
/// tenant is closing at that moment fails without an answer, and a create
/// that failed that way cannot simply be sent again.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(10);

const _: () = assert!(CLIENT_POOL_IDLE.as_secs() + 5 <= SERVER_IDLE_CLOSE.as_secs());
