//! `GET /events` and `GET /tasks/{id}/status?wait=`: events from two replicas on one stream, in
//! order per task; resuming with `Last-Event-ID` (from the ring, from the store, or `reset`);
//! filters; a stalled subscriber dropped while the gateway's memory stays flat; waits that answer
//! when the task is final; the `read` scope.

mod feeds;
mod sse;
mod stall;
mod wait;
