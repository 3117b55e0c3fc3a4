use serde::{Deserialize, Serialize};

use crate::{Role, SlotName};

/// Percent of new requests each slot receives. They always add up to 100, or are both 0
/// when no slot is live.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Weights {
    /// Percent of requests for blue.
    pub blue: u8,
    /// Percent of requests for green.
    pub green: u8,
}

impl Weights {
    /// All traffic to `slot`.
    pub fn all_to(slot: Option<SlotName>) -> Weights {
        match slot {
            Some(SlotName::Blue) => Weights {
                blue: 100,
                green: 0,
            },
            Some(SlotName::Green) => Weights {
                blue: 0,
                green: 100,
            },
            None => Weights { blue: 0, green: 0 },
        }
    }

    /// The weight of one slot.
    pub fn of(&self, slot: SlotName) -> u8 {
        match slot {
            SlotName::Blue => self.blue,
            SlotName::Green => self.green,
        }
    }
}

/// What one slot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The version deployed in the slot, when known.
    pub version: Option<String>,
    /// Upstream addresses (`host:port`) of the slot's instances.
    pub upstreams: Vec<String>,
    /// What the slot is for.
    pub role: Role,
}

impl SlotState {
    /// An empty slot.
    pub fn idle() -> SlotState {
        SlotState {
            version: None,
            upstreams: Vec::new(),
            role: Role::Idle,
        }
    }
}

/// The routing state: which slot is live and what each slot holds. This is what the store
/// persists and what the data plane's routing table is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingState {
    /// Incremented by every change; the store compares it so that two writers cannot both
    /// apply a change made from the same state.
    pub revision: u64,
    /// The slot that serves users, if any.
    pub live: Option<SlotName>,
    /// Share of new requests per slot, in percent.
    pub weights: Weights,
    /// Blue, then green (index with [`SlotName::index`]).
    pub slots: [SlotState; 2],
    /// The session drain of the last switch (`[sessions]`), if one is running: shared
    /// state, so that every router applies the same window. Set by the control plane
    /// (this crate reads no clock); the transitions here keep it, except that emptying
    /// the drained slot or placing a new candidate in it ends it.
    #[serde(default)]
    pub drain: Option<Drain>,
}

/// Sessions pinned to `slot` keep going there until `until_unix_ms`, although it is no
/// longer live (`[sessions] drain` after a switch away from it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The slot that was live before the switch.
    pub slot: SlotName,
    /// The end of the window, in milliseconds since the Unix epoch.
    pub until_unix_ms: u64,
}

/// Why a switch or rollback was refused. Each message says what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The target slot has no upstreams at all; routing must never point at an empty slot.
    #[error("slot {slot} has no upstreams; routing never points at an empty slot. Deploy a version to it or give it upstreams in [slots.{slot}] first")]
    EmptySlot {
        /// The refused target.
        slot: SlotName,
    },
    /// The target has upstreams but none passes its health check.
    #[error("slot {slot} has no healthy upstream ({total} configured, 0 healthy); fix it, or switch anyway with --force")]
    Unhealthy {
        /// The refused target.
        slot: SlotName,
        /// How many upstreams the slot has.
        total: usize,
    },
    /// A deployment may not replace or empty the live slot.
    #[error("slot {slot} is live; a deployment goes to the other slot, and a live slot is never emptied")]
    LiveSlot {
        /// The refused slot.
        slot: SlotName,
    },
    /// A rollback needs a standby slot to go back to.
    #[error("there is no standby slot to roll back to (live: {live}); use `turnout switch --to SLOT` instead")]
    NoStandby {
        /// The live slot, or "none".
        live: String,
    },
}

impl RoutingState {
    /// The state of a router that has never saved one: blue is live when it has upstreams
    /// (green when only green has), and the other slot with upstreams is its standby.
    pub fn initial(blue: SlotState, green: SlotState) -> RoutingState {
        let mut state = RoutingState {
            revision: 0,
            live: None,
            weights: Weights::all_to(None),
            slots: [blue, green],
            drain: None,
        };
        let live = SlotName::ALL
            .into_iter()
            .find(|s| !state.slot(*s).upstreams.is_empty());
        state.set_live(live);
        state
    }

    /// One slot's state.
    pub fn slot(&self, slot: SlotName) -> &SlotState {
        &self.slots[slot.index()]
    }

    /// One slot's state, mutably.
    pub fn slot_mut(&mut self, slot: SlotName) -> &mut SlotState {
        &mut self.slots[slot.index()]
    }

    /// The standby slot, if one is ready for a rollback.
    pub fn standby(&self) -> Option<SlotName> {
        SlotName::ALL
            .into_iter()
            .find(|s| self.slot(*s).role == Role::Standby)
    }

    /// Replaces a slot's upstreams (and version, when given) as configured statically,
    /// keeping roles consistent: a slot that gains upstreams while not live becomes standby,
    /// one that loses them becomes idle (and stops being live).
    pub fn set_static_upstreams(
        &mut self,
        slot: SlotName,
        upstreams: Vec<String>,
        version: Option<String>,
    ) {
        let s = self.slot_mut(slot);
        s.upstreams = upstreams;
        if version.is_some() {
            s.version = version;
        }
        let live = if self.live.is_some_and(|l| self.slot(l).upstreams.is_empty()) {
            None
        } else {
            self.live
        };
        let live = live.or_else(|| {
            SlotName::ALL
                .into_iter()
                .find(|s| !self.slot(*s).upstreams.is_empty())
        });
        self.set_live(live);
    }

    /// The state after a switch of all traffic to `to`. `healthy` is how many of the
    /// target's upstreams pass their health check now. Switching to the slot that is
    /// already live is allowed and changes nothing but the revision.
    pub fn switch(
        &self,
        to: SlotName,
        healthy: usize,
        force: bool,
    ) -> Result<RoutingState, SwitchError> {
        let target = self.slot(to);
        if target.upstreams.is_empty() {
            return Err(SwitchError::EmptySlot { slot: to });
        }
        if healthy == 0 && !force {
            return Err(SwitchError::Unhealthy {
                slot: to,
                total: target.upstreams.len(),
            });
        }
        let mut next = self.clone();
        next.revision += 1;
        next.set_live(Some(to));
        Ok(next)
    }

    /// The state after a rollback: traffic back to the standby slot. The slot that was live
    /// becomes the standby in turn, so a mistaken rollback is undone by another one.
    pub fn rollback(&self, healthy: usize) -> Result<RoutingState, SwitchError> {
        let Some(standby) = self.standby() else {
            return Err(SwitchError::NoStandby {
                live: self.live.map_or("none", SlotName::as_str).to_owned(),
            });
        };
        self.switch(standby, healthy, false)
    }

    /// The state with a deployment's candidate in `slot`: its upstreams and version
    /// replace whatever the slot held, and it gets no traffic yet. Refused for the live
    /// slot: a deployment never replaces what users are on.
    pub fn place_candidate(
        &self,
        slot: SlotName,
        version: String,
        upstreams: Vec<String>,
    ) -> Result<RoutingState, SwitchError> {
        if self.live == Some(slot) {
            return Err(SwitchError::LiveSlot { slot });
        }
        if upstreams.is_empty() {
            return Err(SwitchError::EmptySlot { slot });
        }
        let mut next = self.clone();
        next.revision += 1;
        let s = next.slot_mut(slot);
        s.upstreams = upstreams;
        s.version = Some(version);
        s.role = Role::Candidate;
        // Sessions pinned to the version that was here must not reach the new one.
        next.end_drain_of(slot);
        Ok(next)
    }

    /// The state with `percent` of new requests on the candidate `slot` and the rest on
    /// the live slot (a canary step). 100 is a switch; 0 takes the canary's share back.
    /// Without a live slot there is nothing to split with: all traffic goes to `slot`.
    pub fn set_canary(
        &self,
        slot: SlotName,
        percent: u8,
        healthy: usize,
    ) -> Result<RoutingState, SwitchError> {
        let live = match self.live {
            Some(live) if live != slot && percent < 100 => live,
            _ => return self.switch(slot, healthy, false),
        };
        if self.slot(slot).upstreams.is_empty() {
            return Err(SwitchError::EmptySlot { slot });
        }
        if healthy == 0 && percent > 0 {
            return Err(SwitchError::Unhealthy {
                slot,
                total: self.slot(slot).upstreams.len(),
            });
        }
        let mut next = self.clone();
        next.revision += 1;
        next.weights = match slot {
            SlotName::Blue => Weights {
                blue: percent,
                green: 100 - percent,
            },
            SlotName::Green => Weights {
                blue: 100 - percent,
                green: percent,
            },
        };
        debug_assert_eq!(next.weights.of(live), 100 - percent);
        next.slot_mut(slot).role = Role::Candidate;
        Ok(next)
    }

    /// The state with `slot` emptied (its version retired or a candidate dropped). Refused
    /// for the live slot. Any canary share goes back to the live slot.
    pub fn clear_slot(&self, slot: SlotName) -> Result<RoutingState, SwitchError> {
        if self.live == Some(slot) {
            return Err(SwitchError::LiveSlot { slot });
        }
        let mut next = self.clone();
        next.revision += 1;
        *next.slot_mut(slot) = SlotState::idle();
        next.set_live(next.live);
        next.end_drain_of(slot);
        Ok(next)
    }

    /// Ends the session drain if it is `slot`'s: its version is gone.
    fn end_drain_of(&mut self, slot: SlotName) {
        if self.drain.as_ref().is_some_and(|d| d.slot == slot) {
            self.drain = None;
        }
    }

    /// Makes `live` the live slot with all traffic, and derives the other roles: the other
    /// slot is standby when it has upstreams, idle when it has none.
    fn set_live(&mut self, live: Option<SlotName>) {
        self.live = live;
        self.weights = Weights::all_to(live);
        for slot in SlotName::ALL {
            let s = &mut self.slots[slot.index()];
            s.role = if Some(slot) == live {
                Role::Live
            } else if s.upstreams.is_empty() {
                Role::Idle
            } else if s.role == Role::Candidate {
                // A candidate stays one until it goes live or is cleared.
                Role::Candidate
            } else {
                Role::Standby
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(upstreams: &[&str]) -> SlotState {
        SlotState {
            version: None,
            upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
            role: Role::Idle,
        }
    }

    #[test]
    fn initial_state_prefers_blue_then_green() {
        let cases: &[(&[&str], &[&str], Option<SlotName>, [Role; 2])] = &[
            (
                &["a:1"],
                &["b:1"],
                Some(SlotName::Blue),
                [Role::Live, Role::Standby],
            ),
            (
                &["a:1"],
                &[],
                Some(SlotName::Blue),
                [Role::Live, Role::Idle],
            ),
            (
                &[],
                &["b:1"],
                Some(SlotName::Green),
                [Role::Idle, Role::Live],
            ),
            (&[], &[], None, [Role::Idle, Role::Idle]),
        ];
        for (blue, green, live, roles) in cases {
            let s = RoutingState::initial(slot(blue), slot(green));
            assert_eq!(s.live, *live, "blue={blue:?} green={green:?}");
            assert_eq!([s.slots[0].role, s.slots[1].role], *roles);
            assert_eq!(s.weights, Weights::all_to(*live));
        }
    }

    #[test]
    fn switch_moves_all_traffic_and_keeps_old_live_as_standby() {
        let s = RoutingState::initial(slot(&["a:1"]), slot(&["b:1"]));
        let next = s.switch(SlotName::Green, 1, false).unwrap();
        assert_eq!(next.live, Some(SlotName::Green));
        assert_eq!(
            next.weights,
            Weights {
                blue: 0,
                green: 100
            }
        );
        assert_eq!(next.slot(SlotName::Blue).role, Role::Standby);
        assert_eq!(next.revision, s.revision + 1);
        let back = next.rollback(1).unwrap();
        assert_eq!(back.live, Some(SlotName::Blue));
        assert_eq!(back.slot(SlotName::Green).role, Role::Standby);
    }

    #[test]
    fn switch_refusals() {
        let s = RoutingState::initial(slot(&["a:1"]), slot(&[]));
        assert_eq!(
            s.switch(SlotName::Green, 0, true),
            Err(SwitchError::EmptySlot {
                slot: SlotName::Green
            })
        );
        assert!(matches!(s.rollback(0), Err(SwitchError::NoStandby { .. })));
        let s = RoutingState::initial(slot(&["a:1"]), slot(&["b:1", "b:2"]));
        assert_eq!(
            s.switch(SlotName::Green, 0, false),
            Err(SwitchError::Unhealthy {
                slot: SlotName::Green,
                total: 2
            })
        );
        assert!(s.switch(SlotName::Green, 0, true).is_ok());
    }

    #[test]
    fn static_upstreams_keep_roles_consistent() {
        let mut s = RoutingState::initial(slot(&["a:1"]), slot(&["b:1"]));
        s = s.switch(SlotName::Green, 1, false).unwrap();
        // The operator removes green's upstreams from the config: blue takes over.
        s.set_static_upstreams(SlotName::Green, vec![], None);
        assert_eq!(s.live, Some(SlotName::Blue));
        assert_eq!(s.slot(SlotName::Green).role, Role::Idle);
    }

    #[test]
    fn a_deployment_places_a_candidate_then_splits_then_switches_then_retires_the_old() {
        let s = RoutingState::initial(slot(&["a:1"]), slot(&[]));
        assert!(matches!(
            s.place_candidate(SlotName::Blue, "v2".into(), vec!["b:1".into()]),
            Err(SwitchError::LiveSlot { .. })
        ));
        let s = s
            .place_candidate(SlotName::Green, "v2".into(), vec!["b:1".into()])
            .unwrap();
        assert_eq!(s.slot(SlotName::Green).role, Role::Candidate);
        assert_eq!(s.weights, Weights::all_to(Some(SlotName::Blue)));
        let steps: &[(u8, Weights)] = &[
            (5, Weights { blue: 95, green: 5 }),
            (
                50,
                Weights {
                    blue: 50,
                    green: 50,
                },
            ),
        ];
        let mut c = s.clone();
        for (percent, weights) in steps {
            c = c.set_canary(SlotName::Green, *percent, 1).unwrap();
            assert_eq!(c.weights, *weights);
            assert_eq!(c.live, Some(SlotName::Blue));
            assert_eq!(c.slot(SlotName::Green).role, Role::Candidate);
        }
        assert!(matches!(
            s.set_canary(SlotName::Green, 5, 0),
            Err(SwitchError::Unhealthy { .. })
        ));
        let done = c.set_canary(SlotName::Green, 100, 1).unwrap();
        assert_eq!(done.live, Some(SlotName::Green));
        assert_eq!(done.slot(SlotName::Blue).role, Role::Standby);
        let retired = done.clear_slot(SlotName::Blue).unwrap();
        assert_eq!(retired.slot(SlotName::Blue), &SlotState::idle());
        assert_eq!(retired.weights, Weights::all_to(Some(SlotName::Green)));
        // Dropping a canary gives its share back.
        let dropped = c.clear_slot(SlotName::Green).unwrap();
        assert_eq!(dropped.weights, Weights::all_to(Some(SlotName::Blue)));
        assert!(matches!(
            done.clear_slot(SlotName::Green),
            Err(SwitchError::LiveSlot { .. })
        ));
    }

    #[test]
    fn the_first_deployment_becomes_live_without_a_standby() {
        let s = RoutingState::initial(slot(&[]), slot(&[]));
        let s = s
            .place_candidate(SlotName::Blue, "v1".into(), vec!["a:1".into()])
            .unwrap();
        let s = s.set_canary(SlotName::Blue, 5, 1).unwrap();
        assert_eq!(s.live, Some(SlotName::Blue));
        assert_eq!(s.standby(), None);
        assert_eq!(s.weights, Weights::all_to(Some(SlotName::Blue)));
    }

    #[test]
    fn a_drain_is_kept_by_changes_and_ended_when_its_slot_is_emptied_or_replaced() {
        let drain = |slot| {
            Some(Drain {
                slot,
                until_unix_ms: 5,
            })
        };
        let mut s = RoutingState::initial(slot(&["a:1"]), slot(&["b:1"]));
        s = s.switch(SlotName::Green, 1, false).unwrap();
        s.drain = drain(SlotName::Blue);
        // What the caller set stays through changes that do not touch the drained slot.
        assert_eq!(s.switch(SlotName::Green, 1, false).unwrap().drain, s.drain);
        assert_eq!(s.rollback(1).unwrap().drain, s.drain);
        assert_eq!(s.set_canary(SlotName::Blue, 10, 1).unwrap().drain, s.drain);
        // Its version retired, or a new candidate in its place: the drain ends.
        assert_eq!(s.clear_slot(SlotName::Blue).unwrap().drain, None);
        let placed = s
            .clear_slot(SlotName::Blue)
            .map(|mut c| {
                c.drain = drain(SlotName::Blue);
                c
            })
            .unwrap()
            .place_candidate(SlotName::Blue, "v3".into(), vec!["a:2".into()])
            .unwrap();
        assert_eq!(placed.drain, None);
    }

    #[test]
    fn a_state_saved_before_drains_existed_loads() {
        let s = RoutingState::initial(slot(&["a:1"]), slot(&["b:1"]));
        let mut value = serde_json::to_value(&s).unwrap();
        value.as_object_mut().unwrap().remove("drain");
        assert_eq!(serde_json::from_value::<RoutingState>(value).unwrap(), s);
    }

    #[test]
    fn state_round_trips_as_json() {
        let mut s = RoutingState::initial(slot(&["a:1"]), slot(&["b:1"]));
        s.drain = Some(Drain {
            slot: SlotName::Green,
            until_unix_ms: 1_700_000_000_000,
        });
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RoutingState>(&text).unwrap(), s);
    }
}
