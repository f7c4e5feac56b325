//! The one place where the driver's errors become gRPC status codes.

use tonic::{Code, Status};

/// An error a CSI call can end with. Each variant is one CSI error code; the
/// message says what was wrong and, where possible, what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CsiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl CsiError {
    pub fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::ResourceExhausted(_) => Code::ResourceExhausted,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::Unimplemented(_) => Code::Unimplemented,
            CsiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CsiError::Internal(_) => Code::Internal,
        }
    }

    /// An internal error from an I/O failure, with what was being done.
    pub fn io(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        CsiError::Internal(format!("{context}: {err}"))
    }
}

impl From<CsiError> for Status {
    fn from(err: CsiError) -> Self {
        let code = err.code();
        Status::new(code, err.to_string())
    }
}

/// Result of a CSI operation.
pub type CsiResult<T> = Result<T, CsiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_one_to_one() {
        let status: Status = CsiError::NotFound("volume x does not exist".into()).into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "volume x does not exist");
        let status: Status = CsiError::Aborted("busy".into()).into();
        assert_eq!(status.code(), Code::Aborted);
    }
}
