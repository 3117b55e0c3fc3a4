use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two environments turnout routes between.
#[derive(
    Copy,
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SlotName {
    /// The `blue` slot.
    Blue,
    /// The `green` slot.
    Green,
}

impl SlotName {
    /// Both slots, blue first.
    pub const ALL: [SlotName; 2] = [SlotName::Blue, SlotName::Green];

    /// The other slot.
    pub fn other(self) -> SlotName {
        match self {
            SlotName::Blue => SlotName::Green,
            SlotName::Green => SlotName::Blue,
        }
    }

    /// The name users type: `blue` or `green`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotName::Blue => "blue",
            SlotName::Green => "green",
        }
    }

    /// 0 for blue, 1 for green: an index into per-slot arrays.
    pub fn index(self) -> usize {
        match self {
            SlotName::Blue => 0,
            SlotName::Green => 1,
        }
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot name that is neither `blue` nor `green`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown slot {0:?}: a slot is either \"blue\" or \"green\"")]
pub struct ParseSlotError(pub String);

impl FromStr for SlotName {
    type Err = ParseSlotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(SlotName::Blue),
            "green" => Ok(SlotName::Green),
            other => Err(ParseSlotError(other.to_owned())),
        }
    }
}

/// What a slot is for at the moment.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves users.
    Live,
    /// The previous live slot, kept ready for an instant rollback.
    Standby,
    /// A new version being validated; no user traffic yet (or canary traffic only).
    Candidate,
    /// Holds nothing.
    Idle,
}

impl Role {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Standby => "standby",
            Role::Candidate => "candidate",
            Role::Idle => "idle",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_parse_and_print() {
        for slot in SlotName::ALL {
            assert_eq!(slot.as_str().parse::<SlotName>(), Ok(slot));
            assert_eq!(slot.other().other(), slot);
            assert_ne!(slot.other(), slot);
        }
        let err = "purple".parse::<SlotName>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown slot \"purple\": a slot is either \"blue\" or \"green\""
        );
        // Case matters: users type the lowercase names.
        assert!("Blue".parse::<SlotName>().is_err());
    }
}
