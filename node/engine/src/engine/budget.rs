//! A token bucket on the caller's clock: the per-peer and per-node budgets of what peers may
//! make this node do (sync responses, refusals to strangers).

/// Up to `capacity` units, refilled at `per_second`. A known cost is taken only if the
/// credit covers it ([`Budget::take`]); a cost known only afterwards (a sync response's size)
/// may be spent while any credit is left ([`Budget::has_credit`], [`Budget::spend`]), and the
/// debt is paid back by the refill before the next one, so the average stays at most
/// `per_second`.
#[derive(Clone, Debug)]
pub(super) struct Budget {
    /// Credit in thousandths of a unit (so a refill loses no fraction of a millisecond);
    /// negative while a large spend is paid back.
    credit_milli: i128,
    capacity: u64,
    per_second: u64,
    /// When the credit was last refilled (the caller's ms).
    at_ms: u64,
}

impl Budget {
    /// A full bucket.
    pub(super) fn new(capacity: u64, per_second: u64, now_ms: u64) -> Self {
        Self {
            credit_milli: i128::from(capacity) * 1_000,
            capacity,
            per_second,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        let earned = i128::from(elapsed) * i128::from(self.per_second);
        self.credit_milli = (self.credit_milli + earned).min(i128::from(self.capacity) * 1_000);
    }

    /// Whether any credit is left now.
    pub(super) fn has_credit(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.credit_milli > 0
    }

    /// Takes `units` if the credit covers them; false, taking nothing, if not.
    pub(super) fn take(&mut self, units: u64, now_ms: u64) -> bool {
        self.refill(now_ms);
        let cost = i128::from(units) * 1_000;
        if self.credit_milli < cost {
            return false;
        }
        self.credit_milli -= cost;
        true
    }

    /// Takes `units` that were spent anyway (possibly going into debt).
    pub(super) fn spend(&mut self, units: u64, now_ms: u64) {
        self.refill(now_ms);
        self.credit_milli -= i128::from(units) * 1_000;
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn a_budget_allows_its_rate_on_average_and_pays_back_debt() {
        let mut budget = Budget::new(10, 10, 0);
        let taken = (0..100).filter(|_| budget.take(1, 0)).count();
        assert_eq!(taken, 10, "a full bucket holds its capacity");
        assert!(
            !budget.take(1, 99),
            "nothing earned in 99 ms at 10 per second"
        );
        assert!(budget.take(1, 100), "one unit earned in 100 ms");
        // A large spend puts it in debt: nothing until the debt is paid back.
        budget.spend(25, 100);
        assert!(!budget.has_credit(2_500));
        assert!(budget.has_credit(2_700));
        // Credit never grows beyond the capacity, however long the wait.
        let mut idle = Budget::new(5, 1_000, 0);
        let taken = (0..100).filter(|_| idle.take(1, 1_000_000)).count();
        assert_eq!(taken, 5);
    }
}
