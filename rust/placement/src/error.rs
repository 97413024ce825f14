//! Errors of the placement engine.

use std::fmt;

/// Why a placement request, a topology or a restored placement was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// The request or topology is malformed (caller's mistake).
    Invalid(String),
    /// The VM cannot be placed on this host now; the text says why.
    NoFit(String),
    /// A placement to commit uses resources that are taken or do not exist.
    Conflict(String),
}

impl PlacementError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
    pub(crate) fn no_fit(msg: impl Into<String>) -> Self {
        Self::NoFit(msg.into())
    }
    pub(crate) fn conflict(msg: impl Into<String>) -> Self {
        Self::Conflict(msg.into())
    }
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) | Self::NoFit(m) | Self::Conflict(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PlacementError {}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, PlacementError>;
