//! What a session keeps on disk, under `<state-dir>/sessions/<owner-key>/<session-id>/`:
//! `session.json` ([`record`]), `events.jsonl` ([`events`], the append-only event log),
//! `messages.jsonl` ([`inbox`], every accepted message, fsynced before the API answers 202) and
//! `intents.jsonl` ([`intent`], each turn's intent, fsynced before `turn/start`).
pub mod events;
pub mod inbox;
pub mod intent;
pub mod log;
pub mod mark;
pub mod record;
pub mod tail;
