//! The engine's single error type.

use std::fmt;

/// Errors returned by the page engine. Each variant carries what a caller needs
/// to write a precise message; none of them is a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// A memory image whose length is not a whole number of pages.
    NotPageAligned {
        /// The length that was offered.
        len: usize,
    },
    /// A hash table whose length is not a whole number of 16-byte hashes.
    BadHashTable {
        /// The length that was offered.
        len: usize,
    },
    /// The previous hashes describe a different number of pages than the image.
    PageCountMismatch {
        /// Pages described by the hash table.
        hashes: usize,
        /// Pages in the image.
        pages: usize,
    },
    /// A migration stream that cannot be decoded: truncated, corrupted or hostile.
    Malformed {
        /// What was wrong, for the operator.
        reason: String,
    },
    /// A caller-side mistake: an argument outside what the engine accepts.
    InvalidArgument {
        /// What was wrong.
        reason: String,
    },
    /// A migration channel frame out of place or malformed, or the sender's `ABORT`.
    Channel {
        /// What was wrong.
        reason: String,
    },
    /// The stream rebuilt from the channel differs from the one the source sent.
    DigestMismatch {
        /// Where it differs.
        reason: String,
    },
}

impl EngineError {
    /// A [`EngineError::Malformed`] with `reason`.
    #[must_use]
    pub fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed {
            reason: reason.into(),
        }
    }

    /// An [`EngineError::InvalidArgument`] with `reason`.
    #[must_use]
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            reason: reason.into(),
        }
    }

    /// An [`EngineError::Channel`] with `reason`.
    #[must_use]
    pub fn channel(reason: impl Into<String>) -> Self {
        Self::Channel {
            reason: reason.into(),
        }
    }
}

/// Result alias used throughout the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPageAligned { len } => write!(
                f,
                "image length {len} is not a multiple of the page size {}",
                crate::PAGE_SIZE
            ),
            Self::BadHashTable { len } => write!(
                f,
                "hash table length {len} is not a multiple of {} bytes",
                crate::HASH_LEN
            ),
            Self::PageCountMismatch { hashes, pages } => write!(
                f,
                "previous hashes describe {hashes} pages but the image has {pages}"
            ),
            Self::Malformed { reason } => write!(f, "malformed page stream: {reason}"),
            Self::InvalidArgument { reason } => write!(f, "invalid argument: {reason}"),
            Self::Channel { reason } | Self::DigestMismatch { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for EngineError {}
