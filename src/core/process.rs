//! The name of this process among the others on one database: the `locked_by` of the jobs it
//! claims and the origin of the changes it announces (so it can skip its own echoes). Never
//! changes while the process lives.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// This process's name, cheap to clone: `<pid>-<8 random hex characters>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessId(Arc<str>);

impl ProcessId {
    /// A name no other process (here or on another machine) is likely to have.
    pub fn new_random() -> ProcessId {
        let mut bytes = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        ProcessId::from(format!("{}-{}", std::process::id(), hex::encode(bytes)).as_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ProcessId {
    fn from(name: &str) -> Self {
        ProcessId(name.into())
    }
}

impl Deref for ProcessId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_and_start_with_the_pid() {
        let (a, b) = (ProcessId::new_random(), ProcessId::new_random());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}-", std::process::id())), "{a}");
        assert_eq!(a.len(), a.as_str().len());
    }
}
