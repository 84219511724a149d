//! The sync engine. This first part holds the contracts between the engine and
//! its connectors: what a [`Source`] hands over during an import, and the
//! watermark that lets the next import be a delta.
//!
//! Pure: the engine's IO happens only through the traits defined here.

pub mod engine;
pub mod expr;
pub mod mapping;
pub mod outbound;
pub mod phs;
pub mod rules;
pub mod source;

pub use source::{
    ChangeWatch, ImportMode, ImportSink, ImportSummary, SinkError, Source, SourceChange, SourceId, SourceObject,
    Watermark, deleted_by_reconciliation, first_change,
};
