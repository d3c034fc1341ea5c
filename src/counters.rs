//! Counters of a listener: atomics bumped by connections, and a plain copy
//! of them for `tandem status`. Declared once per listener with
//! [`counters!`], so the copy can never miss a field.

use std::sync::atomic::{AtomicU64, Ordering};

/// `counters!(#[doc] Counters, CountersSnapshot { a, b, ... })` declares
/// `Counters` (one `AtomicU64` per name), `CountersSnapshot` (one `u64` per
/// name, serialisable) and `Counters::snapshot`.
macro_rules! counters {
    ($(#[$m:meta])* $name:ident, $snap:ident { $($f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $name {
            $(pub $f: std::sync::atomic::AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct $snap {
            $(pub $f: u64,)*
        }

        impl $name {
            pub fn snapshot(&self) -> $snap {
                $snap {
                    $($f: self.$f.load(std::sync::atomic::Ordering::Relaxed),)*
                }
            }
        }
    };
}
pub(crate) use counters;

/// Add `n` to a counter.
pub(crate) fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}
