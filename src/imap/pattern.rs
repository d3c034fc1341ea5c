//! LIST and LSUB mailbox patterns (RFC 3501 section 6.3.8): `*` matches
//! any run of characters, `%` any run that does not contain the hierarchy
//! separator `/`.
//!
//! A pattern is compiled once into bit masks over its positions and run as
//! an automaton over the name: the set of positions reached after each
//! character is a bit set, so a match costs O(name length × pattern length
//! / 64) whatever the pattern, and never backtracks. Runs of wildcards
//! collapse first (`**` and `*%` are `*`, `%%` is `%`), so a pattern of a
//! thousand wildcards is one position; what remains is limited to
//! [`MAX_POSITIONS`].

/// Most positions (characters after collapsing wildcard runs) a pattern may
/// have. Mailbox names are at most 1024 bytes, so a longer pattern of
/// literal characters could never match anyway.
pub const MAX_POSITIONS: usize = 1024;

/// Words of a state set: one bit per position, plus the accepting state.
const WORDS: usize = MAX_POSITIONS / 64 + 1;

type Set = [u64; WORDS];

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("mailbox pattern too long: {positions} positions after collapsing wildcards, at most {MAX_POSITIONS}")]
    TooLong { positions: usize },
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Number of positions; bit `len` is the accepting state.
    len: usize,
    /// Words in use.
    words: usize,
    /// Literal positions: a name with fewer characters cannot match.
    literals: usize,
    /// Positions holding `*`.
    star: Box<Set>,
    /// Positions holding `%`.
    percent: Box<Set>,
    /// Positions holding each literal character, sorted by character.
    literal: Vec<(char, Box<Set>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Star,
    Percent,
    Char(char),
}

fn set(mask: &mut Set, bit: usize) {
    mask[bit / 64] |= 1 << (bit % 64);
}

fn get(mask: &Set, bit: usize) -> bool {
    mask[bit / 64] & (1 << (bit % 64)) != 0
}

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern, PatternError> {
        let positions = Pattern::collapsed_len(pattern);
        if positions > MAX_POSITIONS {
            return Err(PatternError::TooLong { positions });
        }
        let mut items: Vec<Item> = Vec::with_capacity(positions);
        for c in pattern.chars() {
            let item = match c {
                '*' => Item::Star,
                '%' => Item::Percent,
                c => Item::Char(c),
            };
            match (items.last_mut(), item) {
                (Some(last @ (Item::Star | Item::Percent)), Item::Star | Item::Percent) => {
                    if item == Item::Star {
                        *last = Item::Star;
                    }
                }
                _ => items.push(item),
            }
        }
        let mut p = Pattern {
            len: items.len(),
            words: items.len() / 64 + 1,
            literals: 0,
            star: Box::new([0; WORDS]),
            percent: Box::new([0; WORDS]),
            literal: Vec::new(),
        };
        for (i, item) in items.iter().enumerate() {
            match item {
                Item::Star => set(&mut p.star, i),
                Item::Percent => set(&mut p.percent, i),
                Item::Char(c) => {
                    p.literals += 1;
                    let at = match p.literal.binary_search_by_key(c, |(k, _)| *k) {
                        Ok(at) => at,
                        Err(at) => {
                            p.literal.insert(at, (*c, Box::new([0; WORDS])));
                            at
                        }
                    };
                    set(&mut p.literal[at].1, i);
                }
            }
        }
        Ok(p)
    }

    /// Positions of a pattern after collapsing wildcard runs.
    fn collapsed_len(pattern: &str) -> usize {
        let mut n = 0;
        let mut wild = false;
        for c in pattern.chars() {
            let w = c == '*' || c == '%';
            if !(w && wild) {
                n += 1;
            }
            wild = w;
        }
        n
    }

    /// Follow wildcards that match nothing: each wildcard position in
    /// `state` also reaches the next position. No two wildcards are
    /// adjacent after compilation, so one step is enough; going from the
    /// high words down, each word is read before anything is added to it.
    fn skip_empty_wildcards(&self, state: &mut Set) {
        let wild = |i: usize| self.star[i] | self.percent[i];
        for w in (0..self.words).rev() {
            let carry = if w > 0 { (state[w - 1] & wild(w - 1)) >> 63 } else { 0 };
            state[w] |= ((state[w] & wild(w)) << 1) | carry;
        }
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        if name.len() < self.literals || name.chars().count() < self.literals {
            return false;
        }
        let n = self.words;
        let mut state: Set = [0; WORDS];
        let mut next: Set = [0; WORDS];
        set(&mut state, 0);
        self.skip_empty_wildcards(&mut state);
        for c in name.chars() {
            let stay_percent = c != '/';
            let lit = self
                .literal
                .binary_search_by_key(&c, |(k, _)| *k)
                .ok()
                .map(|at| &*self.literal[at].1);
            let mut carry = 0u64;
            let mut any = 0u64;
            for w in 0..n {
                let mut x = state[w] & (self.star[w] | if stay_percent { self.percent[w] } else { 0 });
                if let Some(lit) = lit {
                    let moved = state[w] & lit[w];
                    x |= (moved << 1) | carry;
                    carry = moved >> 63;
                }
                next[w] = x;
                any |= x;
            }
            if any == 0 {
                return false;
            }
            self.skip_empty_wildcards(&mut next);
            std::mem::swap(&mut state, &mut next);
        }
        get(&state, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook backtracking matcher: exponential on hostile patterns,
    /// obviously right on small ones.
    fn naive(pattern: &[char], name: &[char]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some(('*', rest)) => (0..=name.len()).any(|i| naive(rest, &name[i..])),
            Some(('%', rest)) => (0..=name.len())
                .take_while(|i| *i == 0 || name[i - 1] != '/')
                .any(|i| naive(rest, &name[i..])),
            Some((c, rest)) => name.first() == Some(c) && naive(rest, &name[1..]),
        }
    }

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).unwrap().matches(n)
    }

    #[test]
    fn list_patterns() {
        assert!(m("*", "INBOX"));
        assert!(m("*", "a/b/c"));
        assert!(m("%", "Work"));
        assert!(!m("%", "Work/Old"));
        assert!(m("Work/%", "Work/Old"));
        assert!(!m("Work/%", "Work/Old/x"));
        assert!(m("W*d", "Work/Old"));
        assert!(!m("INBOX", "INBOX/x"));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("%/%", "a/b"));
        assert!(m("%*%", "a/b"));
        assert!(m("Entwürfe/*", "Entwürfe/x"));
        assert!(!m("a%", "a/"));
    }

    #[test]
    fn agrees_with_backtracking_on_random_inputs() {
        let mut rng = crate::testrng::XorShift(0x5eed_1157_0000_0001);
        let alphabet = ['a', 'b', '/', 'é'];
        let pat_alphabet = ['a', 'b', '/', 'é', '*', '%'];
        for _ in 0..20_000 {
            let pl = (rng.next_u64() % 9) as usize;
            let nl = (rng.next_u64() % 11) as usize;
            let p: Vec<char> = (0..pl)
                .map(|_| pat_alphabet[(rng.next_u64() % pat_alphabet.len() as u64) as usize])
                .collect();
            let n: Vec<char> = (0..nl)
                .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
                .collect();
            let ps: String = p.iter().collect();
            let ns: String = n.iter().collect();
            assert_eq!(m(&ps, &ns), naive(&p, &n), "pattern {ps:?} name {ns:?}");
        }
    }

    #[test]
    fn long_patterns_cross_word_boundaries() {
        // 200 positions: the automaton spans four words.
        let name: String = "ab/".repeat(60);
        let pat: String = "a*/".repeat(60);
        assert!(m(&pat, &name));
        assert!(!m(&format!("{pat}x"), &name));
        let pct: String = "a%/".repeat(60);
        assert!(m(&pct, &name));
        assert!(!m(&"a%".repeat(60), &name));
    }

    #[test]
    fn hostile_patterns_are_fast_or_refused() {
        let name = "a".repeat(1000);
        let t = std::time::Instant::now();
        assert!(!m(&format!("{}b", "*".repeat(100_000)), &name));
        assert!(!m(&format!("{}b", "*a".repeat(500)), &name));
        assert!(!m(&format!("{}b", "%a".repeat(500)), &name));
        assert!(m(&"*a".repeat(500), &name));
        // Generous for a debug build on a loaded machine; the backtracking
        // matcher needs longer than the age of the universe here.
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(
            Pattern::new(&"a*".repeat(600)).unwrap_err(),
            PatternError::TooLong { positions: 1200 }
        );
    }
}
