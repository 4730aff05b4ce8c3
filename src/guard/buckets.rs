//! Token buckets, one per caller, in bounded memory. A bucket that has been idle long enough to
//! be full again is the same as a new one, so it is forgotten: every shard sweeps those out every
//! few seconds, and before it grows past its share of the cap. When a shard is full of busy
//! buckets, a newcomer shares the shard's overflow bucket instead of growing the map.
//!
//! The time is passed in (`now`), so the arithmetic is tested without sleeping.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::auth::Rate;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BucketKey {
    /// An API key, by its id.
    Key(String),
    /// An anonymous caller, by its address (an IPv6 address by its /64: one host's share).
    Addr(IpAddr),
    /// An anonymous caller whose address is unknown (a router served without a socket).
    Unknown,
}

impl BucketKey {
    pub fn addr(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self::Addr(IpAddr::V6(prefix.into()))
            }
            IpAddr::V6(v6) => Self::Addr(IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED))),
            v4 => Self::Addr(v4),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: Rate,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Self {
        Self { tokens: f64::from(rate.burst), last: now, rate }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        // A key's rate may change on reload: the new one applies from now on.
        self.rate = rate;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.per_second))
        }
    }

    /// Whether it would be full by `now`: then it is no different from a new bucket.
    fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate.per_second >= f64::from(self.rate.burst)
    }
}

struct Shard {
    buckets: HashMap<BucketKey, Bucket>,
    swept: Instant,
    overflow: Option<Bucket>,
}

/// The buckets of every caller; shared by all requests (16 locks, held for a few arithmetic
/// operations each).
pub struct Buckets {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

const SHARDS: usize = 16;
/// How often a shard forgets its full buckets even when it is not at its cap.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl Buckets {
    /// At most `max` buckets (rounded up to a multiple of the shard count).
    pub fn new(max: usize) -> Self {
        let now = Instant::now();
        let shards =
            (0..SHARDS).map(|_| Mutex::new(Shard { buckets: HashMap::new(), swept: now, overflow: None })).collect();
        Self { shards, per_shard: max.div_ceil(SHARDS).max(1), hasher: RandomState::new() }
    }

    /// Takes a token from `key`'s bucket (made at `rate` if new): `Err` says how long until the
    /// caller may try again.
    pub fn take(&self, key: BucketKey, rate: Rate, now: Instant) -> Result<(), Duration> {
        let index = (self.hasher.hash_one(&key) as usize) % SHARDS;
        // A poisoned lock only means another request panicked mid-update: the numbers are still
        // numbers, so keep limiting rather than stop.
        let mut shard = self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if now.saturating_duration_since(shard.swept) >= SWEEP_EVERY {
            shard.sweep(now);
        }
        if let Some(bucket) = shard.buckets.get_mut(&key) {
            return bucket.take(rate, now);
        }
        if shard.buckets.len() >= self.per_shard {
            shard.sweep(now);
        }
        if shard.buckets.len() >= self.per_shard {
            return shard.overflow.get_or_insert_with(|| Bucket::new(rate, now)).take(rate, now);
        }
        shard.buckets.entry(key).or_insert_with(|| Bucket::new(rate, now)).take(rate, now)
    }

    /// Buckets held now (for tests and the curious).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.buckets.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, bucket| !bucket.is_full_at(now));
        if self.overflow.is_some_and(|b| b.is_full_at(now)) {
            self.overflow = None;
        }
        self.swept = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_A_SECOND: Rate = Rate { per_second: 2.0, burst: 3 };

    fn key(s: &str) -> BucketKey {
        BucketKey::Key(s.into())
    }

    #[test]
    fn a_burst_is_let_through_then_the_rate_and_the_wait_is_until_the_next_token() {
        let buckets = Buckets::new(100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(buckets.take(key("a"), TWO_A_SECOND, t0), Ok(()));
        }
        assert_eq!(buckets.take(key("a"), TWO_A_SECOND, t0), Err(Duration::from_millis(500)));
        // Another caller has its own bucket.
        assert_eq!(buckets.take(key("b"), TWO_A_SECOND, t0), Ok(()));
        let later = t0 + Duration::from_millis(500);
        assert_eq!(buckets.take(key("a"), TWO_A_SECOND, later), Ok(()));
        assert!(buckets.take(key("a"), TWO_A_SECOND, later).is_err());
    }

    #[test]
    fn a_full_map_shares_an_overflow_bucket_and_forgets_idle_buckets_for_newcomers() {
        let buckets = Buckets::new(SHARDS); // one bucket a shard
        let shard_of = |k: &BucketKey| (buckets.hasher.hash_one(k) as usize) % SHARDS;
        let mut same: Vec<BucketKey> = (0..).map(|i| key(&i.to_string())).take(1000).collect();
        let first = shard_of(&same[0]);
        same.retain(|k| shard_of(k) == first);
        let [k1, k2, k3, ..] = same.as_slice() else { panic!("1000 keys fill every shard thrice") };
        let t0 = Instant::now();
        let take = |k: &BucketKey, now| buckets.take(k.clone(), TWO_A_SECOND, now);
        let drained = |k: &BucketKey, now| (0..4).filter(|_| take(k, now).is_ok()).count();
        assert_eq!(drained(k1, t0), 3, "k1 has its own bucket");
        assert_eq!(drained(k2, t0), 3, "k2 gets the overflow bucket");
        assert_eq!(drained(k3, t0), 0, "k3 shares k2's, now empty");
        assert_eq!(buckets.len(), 1);
        // Two seconds on k1's bucket is full again, so a newcomer takes its place.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(drained(k2, later), 3);
        let shard = buckets.shards[first].lock().expect("not poisoned");
        assert!(shard.buckets.contains_key(k2) && !shard.buckets.contains_key(k1));
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64_prefix_and_a_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(BucketKey::addr(a), BucketKey::addr(b));
        assert_ne!(BucketKey::addr(a), BucketKey::addr(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("mapped");
        assert_eq!(BucketKey::addr(mapped), BucketKey::addr("10.0.0.1".parse().expect("v4")));
    }
}
