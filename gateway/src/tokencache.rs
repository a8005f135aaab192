//! Verified tokens cached by digest until their `exp`: a pod presents the same two tokens on
//! every call until they rotate, and an ECDSA/RSA verification costs far more than a SHA-256.
//! Entries carry the generation of the key set that verified them, so a JWKS change (a key
//! withdrawn) invalidates them at once.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry<V> {
    value: V,
    exp: u64,
    generation: u64,
}

pub struct TokenCache<V> {
    capacity: usize,
    leeway: u64,
    entries: Mutex<HashMap<TokenDigest, Entry<V>>>,
}

impl<V: Clone> TokenCache<V> {
    pub fn new(capacity: usize, leeway: u64) -> Self {
        Self { capacity, leeway, entries: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Entry<V>>> {
        // A panic elsewhere while holding the lock leaves a plain map: still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, if present, verified by key set `generation` and not expired.
    pub fn get(&self, key: &TokenDigest, generation: u64, now: u64) -> Option<V> {
        let mut map = self.lock();
        match map.get(key) {
            Some(e) if e.generation == generation && now <= e.exp.saturating_add(self.leeway) => {
                Some(e.value.clone())
            }
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: TokenDigest, value: V, exp: u64, generation: u64, now: u64) {
        let mut map = self.lock();
        if map.len() >= self.capacity {
            let leeway = self.leeway;
            map.retain(|_, e| e.generation == generation && now <= e.exp.saturating_add(leeway));
            if map.len() >= self.capacity {
                // Still full of live tokens: start over rather than grow without bound.
                map.clear();
            }
        }
        map.insert(key, Entry { value, exp, generation });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_generation_and_capacity() {
        let c = TokenCache::new(2, 10);
        let a = digest("a");
        c.insert(a, 1, 100, 1, 0);
        assert_eq!(c.get(&a, 1, 105), Some(1));
        assert_eq!(c.get(&a, 2, 105), None, "new key set generation invalidates");
        c.insert(a, 1, 100, 1, 0);
        assert_eq!(c.get(&a, 1, 111), None, "expired past leeway");
        assert_eq!(c.len(), 0);
        c.insert(digest("x"), 1, 100, 1, 0);
        c.insert(digest("y"), 2, 100, 1, 0);
        c.insert(digest("z"), 3, 100, 1, 0);
        assert!(c.len() <= 2);
        assert_eq!(c.get(&digest("z"), 1, 0), Some(3));
        assert_ne!(digest("a"), digest("b"));
    }
}
