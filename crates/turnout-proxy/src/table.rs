//! The routing table: an immutable snapshot that the data plane loads once per request.
//! A switch builds a new table and swaps it in with one atomic store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use turnout_core::{Drain, SlotName, Weights};

use crate::upstream::UpstreamRef;

/// One slot as the data plane sees it.
#[derive(Debug)]
pub struct SlotPool {
    /// The slot.
    pub name: SlotName,
    /// The version label for logs and metrics.
    pub version: Option<Arc<str>>,
    /// Its upstreams, in configured order.
    pub upstreams: Vec<UpstreamRef>,
    next: AtomicUsize,
}

impl SlotPool {
    pub(crate) fn new(
        name: SlotName,
        version: Option<Arc<str>>,
        upstreams: Vec<UpstreamRef>,
    ) -> SlotPool {
        SlotPool {
            name,
            version,
            upstreams,
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin over the healthy upstreams, skipping `except` (the upstream a retry
    /// leaves). Round robin rather than least-outstanding: the slot's instances are
    /// identical, and it costs one atomic add per request.
    pub(crate) fn pick(&self, except: Option<&UpstreamRef>) -> Option<&UpstreamRef> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.is_healthy() && except.is_none_or(|e| !Arc::ptr_eq(e, u)))
    }

    /// How many upstreams pass their health check now.
    pub fn healthy_count(&self) -> usize {
        self.upstreams.iter().filter(|u| u.is_healthy()).count()
    }
}

/// A snapshot of where traffic goes.
#[derive(Debug)]
pub struct Table {
    /// The routing state revision this table was built from.
    pub revision: u64,
    /// The live slot.
    pub live: Option<SlotName>,
    /// Share of new requests per slot.
    pub weights: Weights,
    /// Blue and green.
    pub slots: [Arc<SlotPool>; 2],
    /// Failover on (`ProxyOptions::failover`): see [`Table::failover_target`].
    pub failover: bool,
    /// The session drain of the routing state (`RoutingState::drain`); only read with
    /// `[sessions]` on (`sessions.rs`).
    pub drain: Option<Drain>,
    split: AtomicUsize,
}

impl Table {
    pub(crate) fn new(
        revision: u64,
        live: Option<SlotName>,
        weights: Weights,
        slots: [Arc<SlotPool>; 2],
    ) -> Table {
        Table {
            revision,
            live,
            weights,
            slots,
            failover: false,
            drain: None,
            split: AtomicUsize::new(0),
        }
    }

    /// The slot a new request goes to. With all traffic on one slot this is that slot;
    /// with a split (canary) requests are dealt out by a counter, so that over every 100
    /// requests each slot gets exactly its percentage.
    pub(crate) fn choose(&self) -> Option<&Arc<SlotPool>> {
        let Weights { blue, green } = self.weights;
        let slot = match (blue, green) {
            (0, 0) => return None,
            (_, 0) => SlotName::Blue,
            (0, _) => SlotName::Green,
            _ => {
                let n = self.split.fetch_add(1, Ordering::Relaxed) % 100;
                // Spread the blue share evenly over the cycle rather than in one run.
                let spread = (n * 37) % 100;
                if spread < usize::from(blue) {
                    SlotName::Blue
                } else {
                    SlotName::Green
                }
            }
        };
        let pool = &self.slots[slot.index()];
        if self.failover && pool.healthy_count() == 0 {
            if let Some(to) = self.failover_target() {
                return Some(&self.slots[to.index()]);
            }
        }
        Some(pool)
    }

    /// With failover on: the standby, when all traffic goes to the live slot, none of
    /// the live slot's upstreams is healthy and the standby has a healthy one. The
    /// routing state is not changed: requests go back to the live slot as soon as one of
    /// its upstreams is healthy again.
    pub fn failover_target(&self) -> Option<SlotName> {
        let live = self.live?;
        let all_live = match live {
            SlotName::Blue => self.weights.green == 0 && self.weights.blue > 0,
            SlotName::Green => self.weights.blue == 0 && self.weights.green > 0,
        };
        if !self.failover || !all_live || self.slot(live).healthy_count() > 0 {
            return None;
        }
        let standby = SlotName::ALL[1 - live.index()];
        (self.slot(standby).healthy_count() > 0).then_some(standby)
    }

    /// One slot's pool.
    pub fn slot(&self, slot: SlotName) -> &Arc<SlotPool> {
        &self.slots[slot.index()]
    }

    /// The slot for a request whose session is pinned to `pin` (`[sessions]`, see
    /// `sessions.rs`): the pin's slot when that one may take it, else [`Table::choose`].
    pub(crate) fn choose_pinned(&self, pin: Option<SlotName>) -> Option<&Arc<SlotPool>> {
        self.choose_pinned_at(pin, now_unix_ms)
    }

    fn choose_pinned_at(
        &self,
        pin: Option<SlotName>,
        now_unix_ms: impl FnOnce() -> u64,
    ) -> Option<&Arc<SlotPool>> {
        if let Some(p) = pin {
            let pool = self.slot(p);
            // The clock is read only for a pin to a slot out of the rotation.
            let pinned = self.weights.of(p) > 0
                || self
                    .drain
                    .as_ref()
                    .is_some_and(|d| d.slot == p && now_unix_ms() < d.until_unix_ms);
            if pinned && pool.upstreams.iter().any(|u| u.is_healthy()) {
                return Some(pool);
            }
        }
        self.choose()
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    fn pool(name: SlotName, n: usize) -> Arc<SlotPool> {
        let ups = (0..n)
            .map(|i| Arc::new(Upstream::new(name, format!("127.0.0.1:{}", 1000 + i), 4)))
            .collect();
        Arc::new(SlotPool::new(name, None, ups))
    }

    #[test]
    fn split_deals_exact_percentages() {
        for (blue, green) in [(95u8, 5u8), (75, 25), (50, 50), (1, 99)] {
            let t = Table::new(
                0,
                Some(SlotName::Blue),
                Weights { blue, green },
                [pool(SlotName::Blue, 1), pool(SlotName::Green, 1)],
            );
            let blues = (0..1000)
                .filter(|_| t.choose().map(|s| s.name) == Some(SlotName::Blue))
                .count();
            assert_eq!(blues, usize::from(blue) * 10, "weights {blue}/{green}");
        }
    }

    #[test]
    fn pick_round_robins_over_healthy_upstreams() {
        let p = pool(SlotName::Blue, 3);
        p.upstreams[1].eject();
        let picked: Vec<&str> = (0..4)
            .map(|_| p.pick(None).unwrap().addr.as_str())
            .collect();
        assert!(!picked.contains(&"127.0.0.1:1001"), "{picked:?}");
        assert!(picked.contains(&"127.0.0.1:1000") && picked.contains(&"127.0.0.1:1002"));
        let first = p.upstreams[0].clone();
        for _ in 0..4 {
            assert_eq!(p.pick(Some(&first)).unwrap().addr, "127.0.0.1:1002");
        }
        p.upstreams[0].eject();
        p.upstreams[2].eject();
        assert!(p.pick(None).is_none());
    }

    #[test]
    fn failover_goes_to_a_healthy_standby_only_when_on() {
        let mut t = Table::new(
            0,
            Some(SlotName::Blue),
            Weights::all_to(Some(SlotName::Blue)),
            [pool(SlotName::Blue, 2), pool(SlotName::Green, 1)],
        );
        let chosen = |t: &Table| t.choose().map(|s| s.name);
        t.slots[0].upstreams[0].eject();
        assert_eq!(chosen(&t), Some(SlotName::Blue));
        t.slots[0].upstreams[1].eject();
        assert_eq!(chosen(&t), Some(SlotName::Blue), "off by default");
        assert_eq!(t.failover_target(), None);
        t.failover = true;
        assert_eq!(chosen(&t), Some(SlotName::Green));
        assert_eq!(t.failover_target(), Some(SlotName::Green));
        t.slots[1].upstreams[0].eject();
        assert_eq!(chosen(&t), Some(SlotName::Blue), "no healthy standby");
        assert_eq!(t.failover_target(), None);
    }

    fn table(weights: Weights, drain: Option<Drain>) -> Table {
        let pool = |name| {
            let up = Arc::new(Upstream::new(name, "127.0.0.1:1".into(), 4));
            Arc::new(SlotPool::new(name, None, vec![up]))
        };
        let mut t = Table::new(
            1,
            Some(SlotName::Green),
            weights,
            [pool(SlotName::Blue), pool(SlotName::Green)],
        );
        t.drain = drain;
        t
    }

    #[test]
    fn a_pin_holds_while_its_slot_has_traffic_or_is_draining() {
        use SlotName::{Blue, Green};
        let green = Weights::all_to(Some(Green));
        let split = Weights {
            blue: 90,
            green: 10,
        };
        let drain = |slot, until_unix_ms| {
            Some(Drain {
                slot,
                until_unix_ms,
            })
        };
        // (weights, drain, pin, now) -> slot
        let cases = [
            (green, None, None, 0, Green),
            (green, None, Some(Blue), 0, Green),
            (green, None, Some(Green), 0, Green),
            (green, drain(Blue, 100), Some(Blue), 99, Blue),
            (green, drain(Blue, 100), Some(Blue), 100, Green),
            (green, drain(Blue, 100), None, 0, Green),
            (green, drain(Green, 100), Some(Blue), 0, Green),
            // A canary split is sticky both ways.
            (split, None, Some(Green), 0, Green),
            (split, None, Some(Blue), 0, Blue),
        ];
        for (weights, drain, pin, now, want) in cases {
            let t = table(weights, drain.clone());
            for _ in 0..10 {
                let got = t.choose_pinned_at(pin, || now).map(|p| p.name);
                assert_eq!(got, Some(want), "{weights:?} {drain:?} {pin:?} at {now}");
            }
        }
        // A draining slot with no healthy upstream gives its sessions up.
        let t = table(green, drain(Blue, 100));
        t.slot(Blue).upstreams[0].eject();
        assert_eq!(
            t.choose_pinned_at(Some(Blue), || 0).map(|p| p.name),
            Some(Green)
        );
        // The clock is only read for a pin to a slot without traffic.
        let t = table(green, drain(Blue, 100));
        let got = t.choose_pinned_at(Some(Green), || unreachable!("clock read"));
        assert_eq!(got.map(|p| p.name), Some(Green));
        assert_eq!(
            t.choose_pinned_at(None, || unreachable!("clock read"))
                .map(|p| p.name),
            Some(Green)
        );
    }
}
