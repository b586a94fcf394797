//! What a session keeps on disk, under `<state-dir>/sessions/<owner-key>/<session-id>/`:
//! `session.json` ([`record`]), `events.jsonl` ([`events`], the append-only event log) and
//! `messages.jsonl` ([`inbox`], every accepted message, fsynced before the API answers 202).
pub mod events;
pub mod inbox;
pub mod log;
pub mod mark;
pub mod record;
pub mod tail;
