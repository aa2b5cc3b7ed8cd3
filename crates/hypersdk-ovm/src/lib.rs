//! hypersdk's Oracle VM provider, through the Coriolis OVM exporter REST API.
//!
//! (Being written: client, provider, full and incremental backups.)
